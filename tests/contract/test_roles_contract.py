"""Contract for the members the other contract files do not reach: token restore and the
known secret, cluster events, and the backend's own state (shared, available, stats)."""

from __future__ import annotations

import time

from stabilizer.backends.base import Presence
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
    a, b = await open_node("node-a"), await open_node("node-b")
    known = a.tokens.known_secret
    if known is not None:  # only a backend whose key exists before open() knows it
        assert known == await a.tokens.shared_secret() == await b.tokens.shared_secret()


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
        assert await a.groups.join("alice", "room") is True
        assert await a.groups.join("alice", "room") is False  # no change, no event
        assert await a.groups.join("alice", "hall") is True
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


async def test_a_resync_with_a_newer_connection_takes_the_client_over(
    open_node: NodeFactory,
) -> None:
    """After an outage the newer connection of a client wins: the node that admitted it
    while cut off takes the client over and the other node is told to close its socket."""
    a, b = await open_node("node-a"), await open_node("node-b")
    now = time.time()
    await b.presence.register(Presence("x", "node-b", "conn-old", now - 10), max_cluster=None)
    await b.presence.register(Presence("y", "node-b", "conn-new", now + 10), max_cluster=None)
    async with Inbox(b) as inbox_b:
        lost = await a.liveness.resync([Presence("x", "node-a", "conn-a", now),
                                        Presence("y", "node-a", "conn-a2", now)])
        kick = await inbox_b.next()
    assert lost == ["y"]  # b's connection of y is the newer one: a's socket is stale
    assert (kick.kind, kick.target, kick.ref, kick.origin) == (Kind.KICK, "x", "conn-old",
                                                               "node-a")
    x, y = await a.presence.locate("x"), await a.presence.locate("y")
    assert x is not None
    assert (x.node_id, x.conn_id) == ("node-a", "conn-a")
    assert y is not None
    assert y.node_id == "node-b"


async def test_registering_with_end_groups_ends_the_previous_connections_groups(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(Presence("x", "node-a", "c1", time.time()), max_cluster=None)
    await a.groups.join("x", "room")
    first = await b.presence.register(Presence("fresh", "node-b", "c2", time.time()),
                                      max_cluster=None, end_groups=True)
    assert first.groups_ended is False  # nothing was replaced
    again = await b.presence.register(Presence("x", "node-b", "c3", time.time()),
                                      max_cluster=None, end_groups=True)
    assert again.previous is not None
    if again.groups_ended:
        assert await b.groups.of_client("x") == []
        assert await b.groups.members("room") == []
    else:  # the store could not do it in the same step (presence in another slot)
        assert await b.groups.of_client("x") == ["room"]
