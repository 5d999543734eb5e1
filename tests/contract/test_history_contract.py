"""Contract for groups, history streams and sessions, on memory and on a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from stabilizer.backends.base import SessionGone, SessionTaken
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind, decode, encode
from tests.contract.test_backend_contract import Inbox, NodeFactory, open_node, presence

__all__ = ["open_node"]  # the fixture, re-exported for pytest

OPTS = {"size": 5, "ttl": 60.0, "meta_ttl": 120.0}


def env(kind: Kind, target: str | None, payload: str) -> Envelope:
    return Envelope(kind, "node-a", target, payload)


async def test_sequence_assigns_consecutive_offsets_and_reaches_every_node(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with Inbox(a) as inbox_a, Inbox(b) as inbox_b:
        first = await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, "one"), **OPTS)
        second = await b.history.sequence(Target("all"), env(Kind.BROADCAST, None, "two"), **OPTS)
        assert (first.offset, second.offset) == (1, 2)
        assert first.epoch == second.epoch
        assert first.receivers == 2  # every node, the publisher included
        for inbox in (inbox_a, inbox_b):
            got = [await inbox.next(), await inbox.next()]
            assert [(g.payload, g.offset, g.epoch) for g in got] == [
                ("one", 1, first.epoch), ("two", 2, first.epoch)]


async def test_history_returns_what_came_after_a_position(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    epoch = ""
    for i in range(1, 5):
        epoch = (await a.history.sequence(Target("group", "room"), env(Kind.GROUP, "room", f"m{i}"),
                                  **OPTS)).epoch
    found = await a.history.read("g:room", 1, epoch)
    assert found.covered
    assert [decode(raw).payload for raw in found.envelopes] == ["m2", "m3", "m4"]
    assert (await a.history.read("g:room", 4, epoch)).envelopes == []
    assert (await a.history.read("g:room", 4, epoch)).covered
    moved_on = await a.history.read("g:room", 2, "another-epoch")
    assert (moved_on.covered, moved_on.epoch) == (False, epoch)  # the epoch it is in now
    ahead = await a.history.read("g:room", 9, epoch)
    assert (ahead.covered, ahead.epoch) == (False, None)  # ahead of the stream
    everything = await a.history.read("g:room", 0, "")
    assert [decode(raw).offset for raw in everything.envelopes] == [1, 2, 3, 4]


async def test_a_stream_the_store_does_not_hold_reads_as_absent(open_node: NodeFactory) -> None:
    """No offset or epoch at all (expired, lost, never sent) is told apart from a stream
    that has nothing after the position: the node decides which it was (seed 1393242738)."""
    a = await open_node("node-a")
    for after, epoch in ((0, ""), (85, "an-epoch-the-store-forgot")):
        gone = await a.history.read("g:never", after, epoch)
        assert (gone.envelopes, gone.covered, gone.epoch, gone.absent) == ([], True, None, True)
    done = await a.history.sequence(Target("group", "kept"), env(Kind.GROUP, "kept", "m1"),
                                    **OPTS)
    for after in (0, 1):
        held = await a.history.read("g:kept", after, done.epoch)
        assert (held.covered, held.absent) == (True, False)
    assert not (await a.history.read("g:kept", 0, "another-epoch")).absent


async def test_trimmed_history_does_not_cover_an_old_position(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    epoch = ""
    for i in range(1, 9):  # size 5: offsets 1..3 are trimmed away
        epoch = (await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, f"m{i}"),
                                  **OPTS)).epoch
    trimmed = await a.history.read("all", 1, epoch)
    assert (trimmed.covered, trimmed.epoch) == (False, None)  # the same epoch, trimmed
    covered = await a.history.read("all", 3, epoch)
    assert covered.covered
    assert [decode(raw).offset for raw in covered.envelopes] == [4, 5, 6, 7, 8]


async def test_direct_messages_are_kept_only_for_present_or_resumable_clients(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    gone = await a.history.sequence(Target("client", "ghost"), env(Kind.DIRECT, "ghost", "x"),
                                    **OPTS)
    assert gone.offset == 0
    await b.presence.register(presence("bob", "node-b"), max_cluster=None)
    await b.sessions.activate("bob", fresh=True)
    async with Inbox(b) as inbox_b:
        live = await a.history.sequence(Target("client", "bob"),
                                        env(Kind.DIRECT, "bob", "hi"), **OPTS)
        assert (live.offset, live.receivers) == (1, 1)
        assert (await inbox_b.next()).payload == "hi"
    await b.presence.unregister("bob", "c0000000000000001")
    await b.sessions.suspend("bob", 60)
    kept = await a.history.sequence(Target("client", "bob"),
                                    env(Kind.DIRECT, "bob", "later"), **OPTS)
    assert (kept.offset, kept.receivers) == (2, 0)
    found = await a.history.read("c:bob", 1, kept.epoch)
    assert [decode(raw).payload for raw in found.envelopes] == ["later"]


async def test_a_fresh_session_returns_the_baselines_it_records(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a")
    sent = await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, "one"), **OPTS)
    baselines = await a.sessions.activate("ann/1", fresh=True, user_id="ann")
    assert baselines == {"all": (1, sent.epoch), "c:ann/1": (0, ""), "u:ann": (0, "")}
    state = await a.sessions.load("ann/1")
    assert state is not None
    assert state.baselines == baselines
    assert await a.sessions.activate("ann/1", fresh=False, user_id="ann") == {}  # revived


async def test_a_loaded_session_names_the_user_it_was_opened_for(
    open_node: NodeFactory,
) -> None:
    """A resume checks it against the returning client's (see test_resume_user.py)."""
    a = await open_node("node-a")
    await a.sessions.activate("kiosk-1", fresh=True, user_id="alice", conn_id="conn-1")
    await a.sessions.activate("kiosk-2", fresh=True, conn_id="conn-2")  # anonymous
    for client_id, user_id in (("kiosk-1", "alice"), ("kiosk-2", None)):
        state = await a.sessions.load(client_id)
        assert state is not None
        assert state.user_id == user_id
    await a.sessions.activate("kiosk-1", fresh=False, user_id="alice", conn_id="conn-3")
    revived = await a.sessions.load("kiosk-1")
    assert revived is not None
    assert revived.user_id == "alice"
    await a.sessions.activate("kiosk-1", fresh=True, user_id="bob", conn_id="conn-4")
    taken = await a.sessions.load("kiosk-1")
    assert taken is not None
    assert taken.user_id == "bob"  # a fresh session is the new user's


async def test_group_membership_is_cluster_wide(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    assert (await a.groups.join("alice", "room:1*")).changed is True
    assert (await a.groups.join("alice", "room:1*")).changed is False
    assert (await b.groups.join("bob", "room:1*")).changed is True
    assert await a.groups.members("room:1*") == ["alice", "bob"]
    assert await b.groups.of_client("alice") == ["room:1*"]
    assert (await b.groups.leave("alice", "room:1*")).changed is True
    assert (await a.groups.leave("alice", "room:1*")).changed is False
    assert await a.groups.members("room:1*") == ["bob"]


async def test_group_messages_reach_only_subscribed_nodes(open_node: NodeFactory) -> None:
    a, b, c = await open_node("node-a"), await open_node("node-b"), await open_node("node-c")
    async with Inbox(a), Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        await b.groups.subscribe("room")  # returns once the subscription is active
        assert await a.groups.publish("room", encode(env(Kind.GROUP, "room", "x"))) == 1
        assert (await inbox_b.next()).payload == "x"
        await b.groups.unsubscribe("room")
        async with asyncio.timeout(5):
            while await a.groups.publish("room", encode(env(Kind.GROUP, "room", "y"))) != 0:
                pass  # UNSUBSCRIBE takes effect asynchronously on the pub/sub connection
        assert inbox_c.queue.empty()


async def test_sessions_keep_groups_and_user_data_until_they_end(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a")
    assert await a.sessions.load("alice") is None
    await a.sessions.activate("alice", fresh=True)
    await a.groups.join("alice", "room")
    await a.sessions.save_user_data("alice", "name", b"\xa5Alice")
    state = await a.sessions.load("alice")
    assert state is not None
    assert (state.groups, state.user_data) == (["room"], {"name": b"\xa5Alice"})
    await a.sessions.suspend("alice", 60)
    assert await a.sessions.load("alice") is not None  # still resumable
    assert await a.sessions.end("alice") == ["room"]
    assert await a.sessions.load("alice") is None
    assert await a.groups.members("room") == []


async def test_user_data_of_a_client_without_a_session_is_not_kept(
    open_node: NodeFactory,
) -> None:
    """A session whose open failed (the store was unreachable) does not come into being
    when the application then saves the client's user data: a session made of user data
    alone would record no baselines, and a resume would take it for an anonymous one."""
    a = await open_node("node-a")
    await a.sessions.save_user_data("kiosk", "card", b"\xa7alice's")
    assert await a.sessions.load("kiosk") is None
    await a.sessions.activate("kiosk", fresh=True, user_id="alice", conn_id="conn-1")
    state = await a.sessions.load("kiosk")
    assert state is not None
    assert (state.user_data, state.user_id) == ({}, "alice")


async def test_a_closing_connection_leaves_a_newer_connections_session_alone(
    open_node: NodeFactory,
) -> None:
    """end with the closing connection's id does nothing while the client's presence
    names another connection (its newer socket, on any node): that one owns the session.
    With no presence, or presence naming that connection, it ends it. (suspend's guard:
    tests/integration/test_reconnect_race.py, which waits out its clock.)"""
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.presence.register(presence("alice", "node-b", "conn-new"), max_cluster=None)
    await b.sessions.activate("alice", fresh=True, conn_id="conn-new")
    await b.groups.join("alice", "room")
    assert await a.sessions.end("alice", conn_id="conn-old") == []
    state = await b.sessions.load("alice")
    assert state is not None
    assert state.groups == ["room"]
    assert await b.groups.members("room") == ["alice"]

    assert await b.sessions.end("alice", conn_id="conn-new") == ["room"]  # its own: ends
    assert await b.groups.members("room") == []
    await b.presence.unregister("alice", "conn-new")
    await b.sessions.activate("alice", fresh=True, conn_id="conn-new")
    await b.groups.join("alice", "room")
    assert await a.sessions.end("alice", conn_id="conn-old") == ["room"]  # no presence: ends


async def test_a_replaced_connection_cannot_open_or_take_the_session(
    open_node: NodeFactory,
) -> None:
    """activate with a connection that presence no longer names (a newer socket took the
    client, on any node) raises SessionTaken and changes nothing: a fresh open does not end
    the newer socket's session, a revival does not take its holder."""
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.presence.register(presence("alice", "node-b", "conn-new"), max_cluster=None)
    await b.sessions.activate("alice", fresh=True, conn_id="conn-new")
    await b.groups.join("alice", "room")
    for fresh in (True, False):
        with pytest.raises(SessionTaken):
            await a.sessions.activate("alice", fresh=fresh, conn_id="conn-old")
    state = await b.sessions.load("alice")
    assert state is not None
    assert state.groups == ["room"]
    assert (await a.groups.leave("alice", "room")).holder == "conn-new"
    await b.sessions.activate("alice", fresh=False, conn_id="conn-new")  # its own: fine
    await b.presence.unregister("alice", "conn-new")
    assert await a.sessions.activate("alice", fresh=True, conn_id="conn-old") != {}  # none


async def test_a_session_that_ended_after_its_load_cannot_be_revived(
    open_node: NodeFactory,
) -> None:
    """A resume loads the session, then revives it: if it ended in between (a sweep), the
    revival raises SessionGone and changes nothing (it used to open an empty session while
    the resume restored the loaded groups on its node only)."""
    a = await open_node("node-a")
    await a.sessions.activate("alice", fresh=True)
    await a.groups.join("alice", "room")
    await a.sessions.suspend("alice", 60.0)
    assert await a.sessions.load("alice") is not None  # the resume's first step
    assert await a.sessions.end("alice") == ["room"]  # the sweep's, meanwhile
    with pytest.raises(SessionGone):
        await a.sessions.activate("alice", fresh=False, conn_id="conn-1")
    assert await a.sessions.load("alice") is None
    assert await a.groups.members("room") == []
    assert await a.sessions.activate("alice", fresh=True, conn_id="conn-1") != {}


async def test_a_session_is_held_by_the_connection_that_last_activated_it(
    open_node: NodeFactory,
) -> None:
    """held() says whether the session exists and names the connection: a resume's check
    that the store kept, while it read the streams back, the session it took over."""
    a, b = await open_node("node-a"), await open_node("node-b")
    assert not await a.sessions.held("alice", "conn-1")  # no session
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    assert await b.sessions.held("alice", "conn-1")
    assert not await b.sessions.held("alice", "conn-2")
    await a.sessions.suspend("alice", 60.0)
    await b.sessions.activate("alice", fresh=False, conn_id="conn-2")  # a resume took it
    assert not await a.sessions.held("alice", "conn-1")
    assert await a.sessions.held("alice", "conn-2")
    await a.sessions.end("alice")
    assert not await b.sessions.held("alice", "conn-2")


async def test_sweep_ends_sessions_whose_time_ran_out(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    for client in ("gone", "back"):
        await a.sessions.activate(client, fresh=True)
        await a.groups.join(client, "room")
        await a.sessions.suspend(client, 0.05)
    await a.presence.register(presence("back", "node-a"), max_cluster=None)  # reconnected meanwhile
    ended: list[str] = []
    async with asyncio.timeout(5):
        while "gone" not in ended:  # bounded poll on a clock-driven expiry
            ended += await a.sessions.sweep()
            await asyncio.sleep(0.02)
    assert "back" not in ended
    assert await a.groups.members("room") == ["back"]


async def test_reaping_a_dead_node_suspends_its_clients_sessions(open_node: NodeFactory) -> None:
    a, dead = await open_node("node-a"), await open_node("node-dead")
    await dead.liveness.keepalive(0.2)
    await a.liveness.keepalive(30)
    await dead.presence.register(presence("d1", "node-dead"), max_cluster=None)
    await dead.sessions.activate("d1", fresh=True)
    await dead.groups.join("d1", "room")
    deadline = time.monotonic() + 5
    while "node-dead" not in (await a.liveness.keepalive(30, session_ttl=0.05)).reaped:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        while "d1" not in await a.sessions.sweep():
            await asyncio.sleep(0.02)
    assert await a.groups.members("room") == []


@pytest.mark.parametrize("size", [1, 3])
async def test_history_size_bounds_every_stream(open_node: NodeFactory, size: int) -> None:
    a = await open_node("node-a")
    epoch = ""
    for i in range(10):
        epoch = (await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, str(i)),
                                  size=size, ttl=60, meta_ttl=60)).epoch
    found = await a.history.read("all", 10 - size, epoch)
    assert found.covered
    assert len(found.envelopes) == size
    assert not (await a.history.read("all", 10 - size - 1, epoch)).covered


async def test_a_bounded_read_gives_back_one_page_and_where_the_stream_ends(
    open_node: NodeFactory,
) -> None:
    """A replay reads a long stream a page at a time: at most so many entries, and no more
    bytes than allowed but for the first; each page is checked as the first is."""
    a = await open_node("node-a")
    epoch = ""
    for i in range(1, 6):
        epoch = (await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, f"m{i}"),
                                          **OPTS)).epoch
    first = await a.history.read("all", 0, epoch, max_entries=2)
    assert (first.covered, first.last) == (True, 5)
    assert [decode(raw).offset for raw in first.envelopes] == [1, 2]
    one = await a.history.read("all", 2, epoch, max_entries=2, max_bytes=1)
    assert [decode(raw).offset for raw in one.envelopes] == [3]  # (never an empty page)
    size = len(one.envelopes[0])
    two = await a.history.read("all", 2, epoch, max_bytes=2 * size)
    assert [decode(raw).offset for raw in two.envelopes] == [3, 4]
    rest = await a.history.read("all", 4, epoch, max_entries=2)
    assert [decode(raw).offset for raw in rest.envelopes] == [5]
    done = await a.history.read("all", 5, epoch, max_entries=2)
    assert (done.envelopes, done.covered, done.last) == ([], True, 5)
    for i in range(6, 12):  # size 5: the next page's entries are trimmed away
        await a.history.sequence(Target("all"), env(Kind.BROADCAST, None, f"m{i}"), **OPTS)
    gone = await a.history.read("all", 2, epoch, max_entries=2)
    assert (gone.envelopes, gone.covered) == ([], False)
