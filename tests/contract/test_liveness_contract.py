"""Contract of what a node forgets of its own presence: what an earlier process under its
node id left (forget_predecessor), and what a resync prunes, which end as reaped clients
do, while connections admitted during a resync keep their entries."""

from __future__ import annotations

import asyncio
import time

from stabilizer.backends.base import Backend, Presence, Resynced, Seat
from tests.contract.test_backend_contract import NodeFactory, open_node

__all__ = ["open_node"]  # the fixture, re-exported for pytest


def entry(client_id: str, node_id: str, since: float, user: str | None = None) -> Presence:
    return Presence(client_id, node_id, f"conn-{client_id}-{since:.6f}", since, user)


async def swept_away(backend: Backend, client_id: str) -> bool:
    """Sweep until the client's group memberships end (a bounded poll: the away list is
    kept on the store's clock); False if they never do."""
    try:
        async with asyncio.timeout(5):
            while await backend.groups.of_client(client_id):
                await backend.sessions.sweep()
                await asyncio.sleep(0.02)
    except TimeoutError:
        return False
    return True


async def test_a_restarted_node_forgets_what_its_predecessor_left(
    open_node: NodeFactory,
) -> None:
    first, b = await open_node("node-a"), await open_node("node-b")
    now = time.time()
    for client in ("ann/1", "ann/2"):
        await first.presence.register(entry(client, "node-a", now, "ann"), max_cluster=None,
                                      seat=Seat())
        await first.groups.join(client, "room")
    # ann/2 reconnected to node-b meanwhile: she is not the predecessor's any more
    await b.presence.register(entry("ann/2", "node-b", now + 1, "ann"), max_cluster=None,
                              seat=Seat())
    second = await open_node("node-a")  # the same node id, after a crash
    assert await second.liveness.forget_predecessor(0.0) == 1
    assert await b.presence.locate("ann/1") is None
    moved = await b.presence.locate("ann/2")
    assert moved is not None
    assert moved.node_id == "node-b"
    assert [p.client_id for p in await b.users.connections("ann")] == ["ann/2"]
    assert await swept_away(b, "ann/1")
    assert await b.groups.members("room") == ["ann/2"]
    assert await second.liveness.forget_predecessor(0.0) == 0


async def test_what_a_resync_prunes_leaves_its_groups(open_node: NodeFactory) -> None:
    """An unregister lost in an outage leaves presence and, as its session could not be
    settled either, group memberships: the prune ends both."""
    a = await open_node("node-a")
    now = time.time()
    kept, gone = entry("kept", "node-a", now), entry("gone", "node-a", now)
    for presence in (kept, gone):
        await a.presence.register(presence, max_cluster=None)
        await a.groups.join(presence.client_id, "room")
    assert await a.liveness.resync([kept], session_ttl=0.0, listed_at=now + 1) == Resynced()
    assert await a.presence.locate("gone") is None
    assert await swept_away(a, "gone")
    assert await a.groups.members("room") == ["kept"]


async def test_a_resync_keeps_connections_admitted_while_it_listed(
    open_node: NodeFactory,
) -> None:
    """A resync works from a list taken earlier: a client connected since (its entry is
    newer than the list) is neither forgotten nor overwritten by an older listed socket."""
    a = await open_node("node-a")
    listed_at = time.time()
    old = entry("alice", "node-a", listed_at - 1)  # listed, then replaced on this node
    await a.presence.register(entry("alice", "node-a", listed_at + 0.5), max_cluster=None)
    await a.presence.register(entry("bob", "node-a", listed_at + 0.5), max_cluster=None)
    await a.presence.register(entry("stale", "node-a", listed_at - 5), max_cluster=None)
    assert await a.liveness.resync([old], listed_at=listed_at) == Resynced()
    alice, bob = await a.presence.locate("alice"), await a.presence.locate("bob")
    assert alice is not None
    assert alice.conn_id == f"conn-alice-{listed_at + 0.5:.6f}"
    assert bob is not None
    assert await a.presence.locate("stale") is None
    assert await a.presence.count() == 2


async def test_the_store_keeps_its_incarnation_while_it_runs(open_node: NodeFactory) -> None:
    """Nodes see one incarnation, and it stays while the store neither restarts nor fails
    over: a maintenance step that failed for another reason asks for no resync."""
    a, b = await open_node("node-a"), await open_node("node-b")
    first = await a.liveness.incarnation()
    assert first is not None
    await a.presence.register(entry("c1", "node-a", time.time()), max_cluster=None,
                              seat=Seat())
    assert await a.liveness.incarnation() == first
    assert await b.liveness.incarnation() == first
