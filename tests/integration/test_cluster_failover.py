"""A graceful Redis Cluster failover (`CLUSTER FAILOVER` on a replica) under live nodes.

Nothing is killed: the old master becomes a replica and keeps its connections, and Redis 7
ends the sharded subscriptions of the slots it no longer serves by pushing `sunsubscribe`
on them. A node whose channels moved must take that for a lost subscription (re-read the
topology, subscribe again, catch up the history), or it never again receives what is
published on those channels, however healthy its connections look.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stabilizer import BackendUnavailable, WebSocketConfig, WebSocketConnectionManager
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
#: How long a message may take to arrive after the failover ended: the node's recovery
#: (a backoff under 0.2 s, the topology, the subscription, the catch-up) takes far less.
RECOVERY = 20.0
Pair = tuple[WebSocketConnectionManager, WebSocketConnectionManager]
Nodes = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def nodes(replicated_cluster: RedisClusterServers,
                namespace: str) -> AsyncIterator[Nodes]:
    """Two started nodes `a` and `b` on the replicated cluster (shut down at teardown)."""
    made: list[WebSocketConnectionManager] = []

    async def start(**overrides: object) -> Pair:
        options: dict[str, object] = {
            "redis_url": replicated_cluster.url, "redis_cluster": True,
            "namespace": namespace, "node_ttl": 2.0, "op_timeout": 1.0, **QUIET, **overrides}
        for node_id in ("a", "b"):
            manager = WebSocketConnectionManager(WebSocketConfig(node_id=node_id, **options))  # type: ignore[arg-type]
            made.append(manager)
            await manager.start()
        return made[0], made[1]

    yield start
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


async def failover(servers: RedisClusterServers, key: str) -> None:
    """Move `key`'s slot to its master's replica (the nodes' loop runs on meanwhile)."""
    await asyncio.to_thread(servers.failover, key)


async def received(sock: FakeSocket, wanted: str, timeout: float) -> None:
    """Wait for the frame `wanted` (unwrapped from its history frame, when history is on)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await sock.frames.get()
            if frame == wanted:
                return
            if (isinstance(frame, str) and frame.startswith("{")
                    and json.loads(frame).get("data") == wanted):
                return


async def arrives(send: Callable[[str], Awaitable[object]], sock: FakeSocket) -> None:
    """Without history nothing catches up what pub/sub lost while the node resubscribed:
    send again (each one a new text) until one arrives and the sender said it was sent."""
    async with asyncio.timeout(RECOVERY):
        for attempt in itertools.count():
            text = f"after-{attempt}"
            sent: object = False
            with contextlib.suppress(BackendUnavailable):
                sent = await send(text)
            with contextlib.suppress(TimeoutError):
                await received(sock, text, timeout=0.5)
                if sent is not False:
                    return


def group_apart(servers: RedisClusterServers, manager: WebSocketConnectionManager) -> str:
    """A group whose channel is served by another master than the namespace's slot."""
    keys = manager.backend.keys  # type: ignore[attr-defined]
    namespace_master = servers.master_of(keys.broadcast_channel)
    return next(group for group in (f"room-{i}" for i in range(64))
                if servers.master_of(keys.group_channel(group)) is not namespace_master)


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
async def test_group_traffic_survives_a_failover_of_the_groups_shard(
    replicated_cluster: RedisClusterServers, nodes: Nodes, history: bool
) -> None:
    a, b = await nodes(**(HISTORY if history else {}))
    group = group_apart(replicated_cluster, b)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    await b.join_group("bob", group)
    await a.send_to_group(group, "before")
    await received(bob, "before", timeout=3.0)

    await failover(replicated_cluster, b.backend.keys.group_channel(group))  # type: ignore[attr-defined]

    if history:  # sent once: what pub/sub lost while b resubscribed, the catch-up reads
        await a.send_to_group(group, "after")
        await received(bob, "after", timeout=RECOVERY)
    else:
        await arrives(lambda text: a.send_to_group(group, text), bob)
    assert b.backend.routing.follows(group)  # type: ignore[attr-defined]
    assert bob.closed is None


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
async def test_broadcasts_and_direct_messages_survive_a_failover_of_the_namespace_shard(
    replicated_cluster: RedisClusterServers, nodes: Nodes, history: bool
) -> None:
    a, b = await nodes(**(HISTORY if history else {}))
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    await a.broadcast("before")
    await received(bob, "before", timeout=3.0)

    await failover(replicated_cluster, b.backend.keys.broadcast_channel)  # type: ignore[attr-defined]

    if history:  # each sent once: the catch-up reads what pub/sub lost meanwhile
        await a.broadcast("everyone")
        await received(bob, "everyone", timeout=RECOVERY)
    else:
        await arrives(a.broadcast, bob)
    await arrives(lambda text: a.send_to_client("bob", text), bob)
    assert bob.closed is None


@pytest.mark.parametrize("topology", ["redis", "cluster"])
async def test_the_nodes_own_unsubscribes_are_not_taken_for_lost_subscriptions(
    request: pytest.FixtureRequest, namespace: str, topology: str
) -> None:
    """A group left and joined again at once: the confirmation of its unsubscribe comes
    while the node wants the channel again, and must not end the subscription."""
    options: dict[str, object] = {"namespace": namespace, **QUIET}
    if topology == "cluster":
        options.update(redis_url=request.getfixturevalue("replicated_cluster").url,
                       redis_cluster=True)
    else:
        options.update(redis_url=request.getfixturevalue("redis_url"))
    a = WebSocketConnectionManager(WebSocketConfig(node_id="a", **options))  # type: ignore[arg-type]
    b = WebSocketConnectionManager(WebSocketConfig(node_id="b", **options))  # type: ignore[arg-type]
    try:
        await a.start()
        await b.start()
        bob = FakeSocket("bob")
        await b.connect("bob", bob)
        for round_ in range(3):
            await b.join_group("bob", "room")
            await b.leave_group("bob", "room")  # b's last member: it unsubscribes
            await b.join_group("bob", "room")  # (confirmed after that unsubscribe's)
            await a.send_to_group("room", f"round-{round_}")
            await received(bob, f"round-{round_}", timeout=3.0)
            await b.leave_group("bob", "room")
        assert b.stats.backend_reconnects == 0
        assert b.backend.routing.subscribed.is_set()
    finally:
        await a.graceful_shutdown(timeout=2.0)
        await b.graceful_shutdown(timeout=2.0)
