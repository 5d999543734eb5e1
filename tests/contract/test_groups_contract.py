"""Contract of GroupStore.reconcile: what a node reads (and, after the store forgot it,
gives back) to make its local memberships agree with the store's; of what a remote join
or leave tells the client's node: the connection it was written for, and only while it
stands; and of count_members, the dashboard's member counts."""

from __future__ import annotations

import asyncio
import time

import pytest

from stabilizer.backends.base import Backend, MembershipChange, Presence
from stabilizer.pure.presence import parse_entry
from stabilizer.pure.wire import Envelope, Kind, encode
from tests.contract.test_backend_contract import Inbox, NodeFactory, open_node, presence
from tests.contract.test_presence_contract import (
    GROUP,
    entry,
    following,
    next_change,
    no_more_changes,
)

__all__ = ["open_node"]  # the fixture, re-exported for pytest


async def test_reconcile_lists_the_groups_of_each_client_without_changing_them(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.groups.join("alice", "room:1*")
    await b.groups.join("alice", "hall")
    await b.groups.join("bob", "hall")
    listed = await a.groups.reconcile({"alice": {"kitchen"}, "bob": (), "carol": {"x"}})
    assert listed == {"alice": ["hall", "room:1*"], "bob": ["hall"], "carol": []}
    assert await a.groups.members("kitchen") == []  # without restore, nothing is written
    assert await a.groups.of_client("carol") == []


async def test_count_members_counts_each_group_on_every_node(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.groups.join("alice", "hall")
    await b.groups.join("bob", "hall")
    await b.groups.join("bob", "room:1*")
    await b.groups.join("carol", "{odd}|g")
    await b.groups.leave("carol", "{odd}|g")
    assert await a.groups.count_members(["hall", "room:1*", "{odd}|g", "nowhere"]) == {
        "hall": 2, "room:1*": 1, "{odd}|g": 0, "nowhere": 0}
    assert await b.groups.count_members([]) == {}


async def test_reconcile_with_restore_gives_the_store_back_what_it_lost(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.groups.join("alice", "hall")
    listed = await a.groups.reconcile({"alice": {"room", "hall"}, "{odd}|id": {"room"}},
                                      restore=True)
    assert listed == {"alice": ["hall", "room"], "{odd}|id": ["room"]}
    assert await b.groups.members("room") == ["alice", "{odd}|id"]
    assert await b.groups.of_client("alice") == ["hall", "room"]
    assert await a.groups.reconcile({"alice": ()}, restore=True) == {"alice": ["hall", "room"]}


async def test_reconcile_with_restore_is_silent_even_with_events(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", events=True), await open_node("node-b", events=True)
    async with Inbox(b) as inbox_b:
        await a.groups.reconcile({"alice": {"room"}}, restore=True)
        await a.routing.publish(b"marker")  # an event the restore published would come first
        assert await inbox_b.queue.get() == b"marker"
        assert inbox_b.queue.empty()


async def test_reconcile_with_restore_gives_back_the_missing_presence_entries(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.groups.join("carol", GROUP, entry("carol", "Kept"))  # the store still has it
    async with await following(b) as inbox:
        listed = await a.groups.reconcile(
            {"alice": {GROUP, "hall"}, "bob": {GROUP}, "carol": {GROUP}, "dave": {GROUP}},
            restore=True,
            presence={"alice": {GROUP: entry("alice", "Alice", "u1"), "elsewhere": "x"},
                      "carol": {GROUP: entry("carol", "Stale")}, "dave": {}})
        assert listed == {"alice": ["hall", GROUP], "bob": [GROUP], "carol": [GROUP],
                          "dave": [GROUP]}
        change = await next_change(inbox)  # a join for the followers, as any change
        assert (change.old, change.new) == (None, parse_entry(entry("alice", "Alice", "u1")))
        await no_more_changes(inbox, a)  # nothing for the entry kept, or the ones not given
    version, entries = await b.groups.presence_state(GROUP)
    assert version == change.version
    assert entries == {"alice": entry("alice", "Alice", "u1"), "carol": entry("carol", "Kept")}
    assert await a.groups.of_client("alice") == ["hall", GROUP]  # no group from `presence` alone
    assert await a.groups.count_presence("hall") == 0
    assert await a.groups.reconcile({"alice": {GROUP}},
                                    presence={"alice": {GROUP: entry("alice", "New")}}) == {
        "alice": ["hall", GROUP]}  # without restore, nothing is written
    assert (await a.groups.presence_state(GROUP))[1]["alice"] == entry("alice", "Alice", "u1")


async def test_reconcile_with_restore_leaves_a_client_a_connection_as_new_holds_elsewhere(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    now = time.time()
    for client_id, node, since in [("alice", "node-b", now), ("erin", "node-b", now - 5),
                                   ("bob", "node-b", now - 10), ("carol", "node-a", now)]:
        backend = b if node == "node-b" else a
        await backend.presence.register(Presence(client_id, node, f"c-{client_id}", since),
                                        max_cluster=None)
    local = {c: {GROUP} for c in ("alice", "erin", "bob", "carol", "dave")}
    listed = await a.groups.reconcile(
        local, restore=True, presence={"alice": {GROUP: entry("alice", "Old")}},
        opened=dict.fromkeys(local, now - 5))
    # alice and erin came back on node-b (newer, or as new): their groups are node-b's; bob
    # is older there (the store lost writes: node-a claims him), carol is node-a's own, and
    # dave has no presence at all
    assert listed == {"alice": [], "erin": [], "bob": [GROUP], "carol": [GROUP],
                      "dave": [GROUP]}
    assert await b.groups.members(GROUP) == ["bob", "carol", "dave"]
    assert await b.groups.presence_entries("alice", [GROUP]) == {}


async def test_presence_entries_reads_a_client_s_entries_in_the_groups_asked(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await b.groups.join("alice", GROUP, entry("alice", "Alice", "u1"))
    await b.groups.join("alice", "hall")  # a member with no entry
    await b.groups.join("bob", "kitchen", entry("bob", "Bob"))
    assert await a.groups.presence_entries("alice", [GROUP, "hall", "kitchen", GROUP]) == {
        GROUP: entry("alice", "Alice", "u1")}
    assert await a.groups.presence_entries("alice", []) == {}
    assert await a.groups.presence_entries("ghost", [GROUP]) == {}


async def test_reconcile_covers_more_clients_than_one_batch(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    local = {f"client-{n}": {f"g{n % 3}"} for n in range(450)}
    listed = await a.groups.reconcile(local, restore=True)
    assert listed == {client: sorted(groups) for client, groups in local.items()}
    assert len(await a.groups.members("g0")) == 150
    assert await a.groups.reconcile({}) == {}


async def test_a_change_names_the_session_holder_with_sessions(open_node: NodeFactory) -> None:
    a = await open_node("node-a", sessions=True)
    b = await open_node("node-b", sessions=True)
    assert (await b.groups.join("alice", "room")).holder == ""  # no session: no holder
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    assert await b.groups.join("alice", "room") == MembershipChange(True, "conn-1")
    await a.sessions.suspend("alice", 60)
    await a.sessions.activate("alice", fresh=False, conn_id="conn-2")  # resumed elsewhere
    assert await b.groups.join("alice", "room") == MembershipChange(False, "conn-2")
    await a.sessions.activate("alice", fresh=True, conn_id="conn-3")  # ends the membership
    assert await b.groups.leave("alice", "room") == MembershipChange(False, "conn-3")


async def test_a_change_names_the_connection_presence_names_without_sessions(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    assert (await b.groups.join("alice", "room")).holder == ""  # not connected
    await a.presence.register(presence("alice", "node-a", "conn-1"), max_cluster=None)
    assert await b.groups.leave("alice", "room") == MembershipChange(True, "conn-1")
    await b.presence.register(presence("alice", "node-b", "conn-2"), max_cluster=None)
    assert await a.groups.join("alice", "room") == MembershipChange(True, "conn-2")


async def test_a_change_reaches_the_owner_only_while_it_stands(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    joined = encode(Envelope(Kind.MEMBERSHIP, "node-a", "alice", "room", ref="join"))
    left = encode(Envelope(Kind.MEMBERSHIP, "node-a", "alice", "room", ref="leave"))
    assert await a.groups.route_change("alice", "room", member=True, envelope=joined) is False
    await b.presence.register(presence("alice", "node-b", "conn-1"), max_cluster=None)
    async with Inbox(b) as inbox_b:
        await a.groups.join("alice", "room")
        assert await a.groups.route_change("alice", "room", member=True, envelope=joined)
        assert await inbox_b.queue.get() == joined
        await a.groups.leave("alice", "room")  # the join no longer stands: not carried out
        assert not await a.groups.route_change("alice", "room", member=True, envelope=joined)
        assert await a.groups.route_change("alice", "room", member=False, envelope=left)
        assert await inbox_b.queue.get() == left
        assert inbox_b.queue.empty()


async def _swept(node: Backend, client_id: str) -> bool:
    """Sweep until `client_id`'s session is ended (bounded: the grace is 0.2 s here)."""
    async with asyncio.timeout(5.0):
        while client_id not in await node.sessions.sweep():
            await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("sessions", [False, True], ids=["presence", "sessions"])
async def test_a_join_of_a_client_the_store_does_not_know_ends_unless_it_is_claimed(
    open_node: NodeFactory, sessions: bool,
) -> None:
    """A store that lost a client (it restarted empty) may get a join for it from the
    client's node before that node registers it again; should the node die first, nothing
    would ever end that membership: the join puts the client on the away list instead."""
    a = await open_node("node-a", sessions=sessions)
    await a.liveness.keepalive(0.1)  # the grace is twice node_ttl
    await a.presence.register(presence("bob", "node-a", "conn-b"), max_cluster=None)
    if sessions:
        await a.sessions.activate("bob", fresh=True, conn_id="conn-b")
    await a.groups.join("ghost", "room")
    await a.groups.join("bob", "room")
    assert await a.groups.members("room") == ["bob", "ghost"]
    assert await _swept(a, "ghost")
    assert await a.groups.members("room") == ["bob"]  # bob is known: never on the list
    assert await a.groups.of_client("ghost") == []


async def test_a_client_registered_within_the_grace_keeps_its_membership(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a")
    await a.liveness.keepalive(0.1)
    await a.groups.reconcile({"alice": {"room"}, "carol": set()}, restore=True)
    await a.groups.join("dave", "room")
    await a.presence.register(presence("alice", "node-a", "conn-a"), max_cluster=None)
    assert await _swept(a, "dave")  # due, and nobody registered dave
    assert await a.groups.members("room") == ["alice"]  # alice was claimed in time
    assert await a.groups.of_client("alice") == ["room"]
