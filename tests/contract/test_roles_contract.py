"""Contract for the members the other contract files do not reach: token restore, the known
secret and the shared keys, cluster events, and the backend's own state (shared, available,
stats)."""

from __future__ import annotations

import asyncio
import time

import pytest

from stabilizer import MemoryBackend
from stabilizer.backends.base import Presence, Resynced
from stabilizer.pure.keyring import new_shared_key
from stabilizer.pure.wire import Kind, event_of
from stabilizer.results import ClusterEvent
from stabilizer.stats import BackendStats
from tests.contract.test_backend_contract import Inbox, NodeFactory, open_node

__all__ = ["open_node"]  # the fixture, re-exported for pytest


async def test_a_restored_token_nonce_can_be_consumed_again(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    expires = time.time() + 60
    assert await a.tokens.consume("nonce-r", expires) is True
    assert await b.tokens.consume("nonce-r", expires) is False
    await b.tokens.restore("nonce-r")
    assert await a.tokens.consume("nonce-r", expires) is True
    assert await b.tokens.consume("nonce-r", expires) is False


async def test_a_known_secret_is_the_shared_secret(open_node: NodeFactory) -> None:
    """Every node signs with one key; the embedded backend knows it before open() (as its
    known secret), Redis knows none (the key lives in the store, share_keys reads it)."""
    a, b = await open_node("node-a"), await open_node("node-b")
    signing = {(await node.tokens.share_keys(new_shared_key(), {})).signing for node in (a, b)}
    assert len(signing) == 1
    if isinstance(a, MemoryBackend):
        assert {a.tokens.known_secret, b.tokens.known_secret} == signing
    else:
        assert a.tokens.known_secret is None
        assert b.tokens.known_secret is None


async def test_a_key_a_node_holds_verifies_on_every_node_until_its_time(
    open_node: NodeFactory,
) -> None:
    """What one node gives the store (its old key, after it adopted another) every node
    reads back, until the time it was given with; a key whose time is over is dropped."""
    a, b = await open_node("node-a"), await open_node("node-b")
    now = time.time()
    old, over = new_shared_key(), new_shared_key()
    given = await a.tokens.share_keys(new_shared_key(), {old: now + 60, over: now - 1})
    read = await b.tokens.share_keys(new_shared_key(), {})
    assert read.signing == given.signing
    assert read.verifying.keys() == given.verifying.keys() == {old}
    assert read.verifying[old] == pytest.approx(now + 60, abs=0.01)
    later = await b.tokens.share_keys(new_shared_key(), {old: now + 30})
    assert later.verifying[old] == pytest.approx(now + 60, abs=0.01)  # the later end stays


async def test_a_published_event_reaches_every_other_node(open_node: NodeFactory) -> None:
    a = await open_node("node-a", events=True)
    b, c = await open_node("node-b", events=True), await open_node("node-c", events=True)
    event = ClusterEvent("connect", "alice", None, "node-a")
    async with Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        await a.events.publish(event)
        for inbox in (inbox_b, inbox_c):
            got = await inbox.next()
            assert (got.kind, got.origin) == (Kind.EVENT, "node-a")
            assert isinstance(got.payload, str)
            assert event_of(got.payload) == event


async def test_membership_changes_are_events_when_enabled(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", events=True), await open_node("node-b", events=True)
    async with Inbox(b) as inbox_b:
        assert (await a.groups.join("alice", "room")).changed is True
        assert (await a.groups.join("alice", "room")).changed is False  # no change, no event
        assert (await a.groups.join("alice", "hall")).changed is True
        await a.sessions.end("alice")  # leaves both groups
        seen = []
        for _ in range(4):
            got = await inbox_b.next()
            assert got.kind is Kind.EVENT
            assert isinstance(got.payload, str)
            seen.append(event_of(got.payload))
    assert seen[:2] == [ClusterEvent("join", "alice", "room", "node-a"),
                        ClusterEvent("join", "alice", "hall", "node-a")]
    assert sorted(seen[2:], key=lambda e: str(e.group)) == [
        ClusterEvent("leave", "alice", "hall", "node-a"),
        ClusterEvent("leave", "alice", "room", "node-a")]


async def test_membership_changes_are_silent_without_events(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with Inbox(b) as inbox_b:
        await a.groups.join("alice", "room")
        await a.sessions.end("alice")
        await a.routing.publish(b"marker")  # anything the join published would come first
        assert await inbox_b.queue.get() == b"marker"


async def test_state_after_open_and_after_close(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    await a.presence.count()  # one successful operation
    assert a.available is True
    assert isinstance(a.stats, BackendStats)
    assert isinstance(a.name, str)
    assert a.name
    assert a.is_shared is True  # every node of this fixture shares one store
    await a.aclose()
    assert a.available is False
    await a.aclose()  # idempotent


@pytest.mark.parametrize("claims", [True, False])
async def test_a_resync_takes_a_client_over_only_for_a_newer_claiming_connection(
    open_node: NodeFactory, claims: bool,
) -> None:
    """After an outage a connection admitted while its node was cut off (it claims) and
    newer than the other node's takes the client over, and the other node is told to close
    its older socket; a connection the store had recorded never does (it was overwritten
    by a later registration, whatever the clocks say)."""
    a, b = await open_node("node-a"), await open_node("node-b")
    now = time.time()
    await b.presence.register(Presence("x", "node-b", "conn-old", now - 10), max_cluster=None)
    await b.presence.register(Presence("y", "node-b", "conn-new", now + 10), max_cluster=None)
    local = [Presence("x", "node-a", "conn-a", now), Presence("y", "node-a", "conn-a2", now)]
    async with Inbox(b) as inbox_b:
        resynced = await a.liveness.resync(local, claims={"x", "y"} if claims else set())
        if claims:
            kick = await inbox_b.next()
            assert (kick.kind, kick.target, kick.ref, kick.origin) == (
                Kind.KICK, "x", "conn-old", "node-a")
    assert resynced == Resynced(lost=("y",) if claims else ("x", "y"))
    x, y = await a.presence.locate("x"), await a.presence.locate("y")
    assert x is not None
    assert y is not None
    assert (x.node_id, x.conn_id) == (("node-a", "conn-a") if claims else ("node-b", "conn-old"))
    assert y.node_id == "node-b"


async def test_a_claiming_connection_under_a_millisecond_newer_takes_the_client_over(
    open_node: NodeFactory,
) -> None:
    """Two connects of one client on two nodes can be less than a millisecond apart: the
    newer one still wins the resync (entries used to hold milliseconds, so such a pair tied
    and the newer socket was closed as replaced: a flaky outage test showed it)."""
    a, b = await open_node("node-a"), await open_node("node-b")
    start = float(int(time.time())) + 0.0001  # both inside one millisecond
    await b.presence.register(Presence("x", "node-b", "conn-old", start), max_cluster=None)
    resynced = await a.liveness.resync([Presence("x", "node-a", "conn-a", start + 0.0006)],
                                       claims={"x"})
    assert resynced == Resynced()
    found = await a.presence.locate("x")
    assert found is not None
    assert (found.node_id, found.conn_id) == ("node-a", "conn-a")


async def test_a_swept_session_leaves_its_groups_with_events(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", events=True), await open_node("node-b", events=True)
    await a.sessions.activate("gone", fresh=True)
    await a.groups.join("gone", "room")
    await a.sessions.suspend("gone", 0.001)
    async with Inbox(b) as inbox_b:
        async with asyncio.timeout(5):
            while "gone" not in await a.sessions.sweep():
                await asyncio.sleep(0.01)  # bounded poll of a clock-driven expiry
            events = []
            while not events or events[-1].event != "leave":  # (an inbox may hold the join)
                got = await inbox_b.next()
                assert got.kind is Kind.EVENT
                assert isinstance(got.payload, str)
                events.append(event_of(got.payload))
    assert events[-1] == ClusterEvent("leave", "gone", "room", "node-a")
    assert await a.groups.members("room") == []


async def test_registering_with_end_groups_ends_the_previous_connections_groups(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(Presence("x", "node-a", "c1", time.time()), max_cluster=None)
    await a.groups.join("x", "room")
    first = await b.presence.register(Presence("fresh", "node-b", "c2", time.time()),
                                      max_cluster=None, end_groups=True)
    assert first.previous is None
    again = await b.presence.register(Presence("x", "node-b", "c3", time.time()),
                                      max_cluster=None, end_groups=True)
    assert again.previous is not None
    if again.groups_ended:
        assert await b.groups.of_client("x") == []
        assert await b.groups.members("room") == []
    else:  # the store could not do it in the same step (presence in another slot)
        assert await b.groups.of_client("x") == ["room"]


async def test_registering_with_end_groups_ends_groups_no_connection_held(
    open_node: NodeFactory,
) -> None:
    """A join written for a client no connection holds (a reaped node's late write): a
    connection registered without history begins with none of its groups."""
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.groups.join("x", "room")
    registered = await b.presence.register(Presence("x", "node-b", "c1", time.time()),
                                           max_cluster=None, end_groups=True)
    assert registered.previous is None
    if not registered.groups_ended:  # (presence in another slot: the node ends them after)
        assert await b.groups.of_client("x") == ["room"]
        await b.sessions.end("x", conn_id="c1")
    assert await b.groups.of_client("x") == []
    assert await b.groups.members("room") == []
