"""Contract of presence with state in GroupStore: a member's entry is written with its join,
changed by an update, and removed by every end of the membership (a leave, an ended,
replaced or fresh session, a sweep after a node died); each change is published on the
group's channel with a growing version, the changes one sweep makes to a group in one
envelope."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer.backends.base import Backend
from stabilizer.pure.presence import (
    Change,
    entry_text,
    parse_change,
    parse_changes,
    parse_entry,
)
from stabilizer.pure.wire import Kind
from tests.contract.test_backend_contract import Inbox, NodeFactory, open_node, presence

__all__ = ["open_node"]  # the fixture, re-exported for pytest

GROUP = "room:{1}*"


def entry(client_id: str, name: str, user_id: str | None = None) -> str:
    return entry_text(client_id, user_id, f'{{"name":"{name}"}}')


async def next_change(inbox: Inbox) -> Change:
    """The next PRESENCE envelope of the inbox (other kinds are skipped)."""
    while True:
        envelope = await inbox.next()
        if envelope.kind is Kind.PRESENCE:
            assert envelope.target == GROUP
            change = parse_change(envelope.payload, envelope.ref)
            assert change is not None
            return change


async def next_batch(inbox: Inbox) -> tuple[str | None, list[Change]]:
    """The group and the changes of the next PRESENCE envelope (others are skipped)."""
    while True:
        envelope = await inbox.next()
        if envelope.kind is Kind.PRESENCE:
            changes = parse_changes(envelope.payload, envelope.ref)
            assert changes is not None
            return envelope.target, changes


async def no_more_changes(inbox: Inbox, other: Backend) -> None:
    """Nothing more was published: a marker sent after it arrives next."""
    await other.groups.publish(GROUP, b"marker")
    async with asyncio.timeout(3):
        assert await inbox.queue.get() == b"marker"
    assert inbox.queue.empty()


async def following(node: Backend) -> Inbox:
    await node.groups.subscribe(GROUP)
    return Inbox(node)


async def test_a_join_with_presence_writes_and_publishes_the_entry(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with await following(b) as inbox:
        await a.groups.join("alice", GROUP, entry("alice", "Alice", "u1"))
        change = await next_change(inbox)
        assert change.old is None
        assert change.new == parse_entry(entry("alice", "Alice", "u1"))
        version, entries = await a.groups.presence_state(GROUP)
        assert version == change.version
        assert entries == {"alice": entry("alice", "Alice", "u1")}
        assert await b.groups.count_presence(GROUP) == 1
        assert await b.groups.members(GROUP) == ["alice"]
        await no_more_changes(inbox, a)


async def test_a_plain_join_writes_no_presence(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with await following(b) as inbox:
        await a.groups.join("bob", GROUP)
        await no_more_changes(inbox, a)
    assert await a.groups.presence_state(GROUP) == (0, {})
    assert await a.groups.count_presence(GROUP) == 0
    assert await a.groups.members(GROUP) == ["bob"]
    await a.groups.leave("bob", GROUP)
    assert await a.groups.presence_state(GROUP) == (0, {})


async def test_an_update_changes_a_members_entry_only(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with await following(b) as inbox:
        assert not await a.groups.update_presence("alice", GROUP, entry("alice", "A"))
        await a.groups.join("alice", GROUP, entry("alice", "A"))
        joined = await next_change(inbox)
        assert await a.groups.update_presence("alice", GROUP, entry("alice", "B"))
        updated = await next_change(inbox)
        assert updated.version > joined.version
        assert updated.old == joined.new
        assert updated.new is not None
        assert updated.new.meta == {"name": "B"}
        assert await a.groups.update_presence("alice", GROUP, entry("alice", "B"))  # same
        await a.groups.join("alice", GROUP)  # a plain join again keeps the entry
        await no_more_changes(inbox, a)
    assert (await a.groups.presence_state(GROUP))[1] == {"alice": entry("alice", "B")}


async def test_a_leave_removes_the_entry_and_publishes_it(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    async with await following(b) as inbox:
        await a.groups.join("alice", GROUP, entry("alice", "A"))
        await a.groups.join("bob", GROUP, entry("bob", "B"))
        first, second = await next_change(inbox), await next_change(inbox)
        await a.groups.leave("alice", GROUP)
        left = await next_change(inbox)
        assert first.version < second.version < left.version
        assert left.client_id == "alice"
        assert left.new is None
        assert left.old == first.new
        assert await a.groups.count_presence(GROUP) == 1
        await a.groups.leave("bob", GROUP)
        emptied = await next_change(inbox)
        assert await a.groups.presence_state(GROUP) == (0, {})
        await a.groups.join("carol", GROUP, entry("carol", "C"))
        again = await next_change(inbox)
        assert again.version > emptied.version  # versions keep growing past an empty group


async def test_an_ended_session_removes_its_entries(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", sessions=True), await open_node("node-b", sessions=True)
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    async with await following(b) as inbox:
        await a.groups.join("alice", GROUP, entry("alice", "A"))
        await a.groups.join("alice", "other", entry("alice", "A"))
        await next_change(inbox)
        assert await a.sessions.end("alice") == sorted([GROUP, "other"])
        left = await next_change(inbox)
        assert left.client_id == "alice"
        assert left.new is None
    assert await a.groups.count_presence(GROUP) == 0
    assert await a.groups.count_presence("other") == 0


async def test_a_fresh_session_removes_the_entries_of_the_last_one(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a", sessions=True)
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    await a.groups.join("alice", GROUP, entry("alice", "A"))
    await a.sessions.activate("alice", fresh=True, conn_id="conn-2")
    assert await a.groups.presence_state(GROUP) == (0, {})


async def test_a_replaced_connection_ends_its_entries_with_its_groups(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    await a.presence.register(presence("alice", "node-a", "conn-1"), max_cluster=None)
    await a.groups.join("alice", GROUP, entry("alice", "A"))
    registered = await b.presence.register(presence("alice", "node-b", "conn-2"),
                                           max_cluster=None, end_groups=True)
    if registered.groups_ended:
        assert await a.groups.presence_state(GROUP) == (0, {})
    else:  # (a store that cannot end them in that step: the node ends the session after)
        await b.sessions.end("alice")
        assert await a.groups.presence_state(GROUP) == (0, {})


async def test_the_sweep_after_a_node_died_removes_its_clients_entries(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a", sessions=True)
    dead = await open_node("node-dead", sessions=True)
    await dead.liveness.keepalive(0.2)
    await a.liveness.keepalive(30)
    for client in ("d1", "d2"):
        await dead.presence.register(presence(client, "node-dead", f"conn-{client}"),
                                     max_cluster=None)
        await dead.sessions.activate(client, fresh=True, conn_id=f"conn-{client}")
        await dead.groups.join(client, GROUP, entry(client, client))
    await a.groups.join("alive", GROUP, entry("alive", "here"))
    async with await following(a) as inbox:
        async with asyncio.timeout(5):
            while "node-dead" not in (await a.liveness.keepalive(30, session_ttl=0.05)).reaped:
                await asyncio.sleep(0.05)  # bounded poll of a clock-driven expiry
            ended: list[str] = []
            while len(ended) < 2:
                ended += await a.sessions.sweep()
                await asyncio.sleep(0.05)
        left: list[str] = []
        while len(left) < 2:
            left += [change.client_id for change in (await next_batch(inbox))[1]]
        assert sorted(left) == ["d1", "d2"]
    assert (await a.groups.presence_state(GROUP))[1] == {"alive": entry("alive", "here")}
    assert await a.groups.count_presence(GROUP) == 1


async def test_one_sweep_publishes_one_change_per_group_for_all_its_sessions(
    open_node: NodeFactory, request: pytest.FixtureRequest,
) -> None:
    other = "room:{2}*"
    a = await open_node("node-a", sessions=True)
    dead = await open_node("node-dead", sessions=True)
    await dead.liveness.keepalive(0.2)
    await a.liveness.keepalive(30)
    for client, groups in (("d1", [GROUP]), ("d2", [GROUP, other]), ("d3", [other])):
        await dead.presence.register(presence(client, "node-dead", f"conn-{client}"),
                                     max_cluster=None)
        await dead.sessions.activate(client, fresh=True, conn_id=f"conn-{client}")
        for group in groups:
            await dead.groups.join(client, group, entry(client, client))
    await a.groups.join("alive", GROUP, entry("alive", "here"))
    await a.groups.subscribe(other)
    async with await following(a) as inbox:
        async with asyncio.timeout(5):
            while "node-dead" not in (await a.liveness.keepalive(30, session_ttl=0.05)).reaped:
                await asyncio.sleep(0.05)  # bounded poll of a clock-driven expiry
            ended: list[str] = []
            while not ended:
                ended = await a.sessions.sweep()
                await asyncio.sleep(0.05)  # bounded poll: the sessions run out on a clock
        left: dict[str | None, list[str]] = {}
        batches: dict[str | None, int] = {}
        while sum(len(clients) for clients in left.values()) < 4:
            group, changes = await next_batch(inbox)
            assert all(change.new is None for change in changes)
            assert [change.version for change in changes] == sorted(
                {change.version for change in changes})
            left.setdefault(group, []).extend(change.client_id for change in changes)
            batches[group] = batches.get(group, 0) + 1
        assert {group: sorted(clients) for group, clients in left.items()} == {
            GROUP: ["d1", "d2"], other: ["d2", "d3"]}
        if request.node.callspec.params["open_node"] != "cluster":
            # one script ends them all (a Cluster ends each session in its own slot's steps)
            assert sorted(ended) == ["d1", "d2", "d3"]
            assert batches == {GROUP: 1, other: 1}
        await no_more_changes(inbox, dead)
    assert (await a.groups.presence_state(GROUP))[1] == {"alive": entry("alive", "here")}
    assert (await a.groups.presence_state(other))[1] == {}


async def test_many_members_are_counted(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    for n in range(300):
        await a.groups.join(f"client-{n}", GROUP, entry(f"client-{n}", str(n)))
    await a.groups.join("plain", GROUP)
    assert await a.groups.count_presence(GROUP) == 300
    version, entries = await a.groups.presence_state(GROUP)
    assert len(entries) == 300
    assert version > 0
    assert len(await a.groups.members(GROUP)) == 301
