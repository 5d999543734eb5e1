"""Contract of the users role, on memory, Redis (one presence bucket: seats kept in the
presence scripts) and Redis Cluster (four buckets: seats kept by a follow-up script)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from stabilizer.backends.base import Presence, Resynced, Seat, UserLimit, UserRoute
from stabilizer.config import CloseCode
from stabilizer.errors import ConfigError, UserConnectionLimitError
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind, close_of, encode
from tests.contract.test_backend_contract import Inbox, NodeFactory, open_node

__all__ = ["open_node"]  # the fixture, re-exported for pytest

INFO = '{"name":"Ann"}'


def seat_of(client_id: str, node_id: str, user: str | None = "ann",
            conn_id: str | None = None) -> Presence:
    return Presence(client_id, node_id, conn_id or f"conn-{client_id}", time.time(), user)


async def test_a_users_connections_are_listed_with_info_and_counted(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(seat_of("ann/tab1", "node-a"), max_cluster=None,
                              seat=Seat(INFO))
    await b.presence.register(seat_of("ann/tab2", "node-b"), max_cluster=None,
                              seat=Seat(INFO))
    await b.presence.register(seat_of("bob/tab1", "node-b", "bob"), max_cluster=None,
                              seat=Seat())
    await a.presence.register(seat_of("anonymous", "node-a", None), max_cluster=None)
    found = await b.users.connections("ann")
    assert [(p.client_id, p.node_id, p.user_id, p.info) for p in found] == [
        ("ann/tab1", "node-a", "ann", {"name": "Ann"}),
        ("ann/tab2", "node-b", "ann", {"name": "Ann"})]
    assert await a.users.count() == 2
    located = await a.presence.locate("ann/tab2")
    assert located is not None
    assert (located.user_id, located.info) == ("ann", None)  # info only via connections()
    assert await a.users.connections("nobody") == []


async def test_set_info_changes_the_listed_info_of_the_seat_it_names(
    open_node: NodeFactory,
) -> None:
    """Fresh credentials of a live connection bring new info; a newer socket of the same
    client keeps its own."""
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(seat_of("ann/tab1", "node-a"), max_cluster=None,
                              seat=Seat(INFO))
    assert await b.users.set_info("ann", "ann/tab1", "conn-ann/tab1", '{"name":"Annie"}')
    assert [p.info for p in await a.users.connections("ann")] == [{"name": "Annie"}]
    assert await a.users.set_info("ann", "ann/tab1", "conn-ann/tab1", "")
    assert [p.info for p in await a.users.connections("ann")] == [None]
    await b.presence.register(seat_of("ann/tab1", "node-b", conn_id="newer"),
                              max_cluster=None, seat=Seat(INFO))
    assert not await a.users.set_info("ann", "ann/tab1", "conn-ann/tab1", '{"old":1}')
    assert not await a.users.set_info("ann", "ann/tab9", "conn-ann/tab9", '{"old":1}')
    assert not await a.users.set_info("bob", "ann/tab1", "newer", '{"old":1}')
    listed = await b.users.connections("ann")
    assert [(p.client_id, p.node_id, p.conn_id, p.info) for p in listed] == [
        ("ann/tab1", "node-b", "newer", {"name": "Ann"})]
    assert await a.users.count() == 1
    located = await a.presence.locate("ann/tab1")
    assert located is not None
    assert located.info is None  # info only via connections()


async def test_unregister_frees_the_seat_and_the_last_one_the_user(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a")
    for tab in ("tab1", "tab2"):
        await a.presence.register(seat_of(f"ann/{tab}", "node-a"), max_cluster=None,
                                  seat=Seat())
    assert await a.presence.unregister("ann/tab1", "someone-else") is False
    assert len(await a.users.connections("ann")) == 2
    assert await a.presence.unregister("ann/tab1", "conn-ann/tab1") is True
    assert [p.client_id for p in await a.users.connections("ann")] == ["ann/tab2"]
    assert await a.users.count() == 1
    assert await a.presence.unregister("ann/tab2", "conn-ann/tab2") is True
    assert await a.users.connections("ann") == []
    assert await a.users.count() == 0


async def test_a_client_id_taken_by_another_user_leaves_the_old_users_seats(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(seat_of("shared", "node-a", "ann"), max_cluster=None,
                              seat=Seat())
    await b.presence.register(seat_of("shared", "node-b", "bob", "conn-2"),
                              max_cluster=None, seat=Seat())
    assert await a.users.connections("ann") == []
    assert [p.node_id for p in await a.users.connections("bob")] == ["node-b"]
    assert await a.users.count() == 1


@pytest.mark.parametrize("limit", [1, 3])
async def test_the_user_limit_holds_under_concurrent_registrations(
    open_node: NodeFactory, limit: int,
) -> None:
    """Ten tabs of one user register at once on two nodes: exactly `limit` get in; a
    tab that reconnects (same client id) is not a new connection."""
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)

    async def tab(index: int) -> bool:
        node, name = (a, "node-a") if index % 2 else (b, "node-b")
        try:
            await node.presence.register(seat_of(f"ann/t{index}", name), max_cluster=None,
                                         seat=Seat("", limit))
        except UserConnectionLimitError:
            return False
        return True

    admitted = await asyncio.gather(*(tab(i) for i in range(10)))
    assert sum(admitted) == limit
    inside = [i for i, ok in enumerate(admitted) if ok]
    again = seat_of(f"ann/t{inside[0]}", "node-a", conn_id="conn-again")
    await a.presence.register(again, max_cluster=None, seat=Seat("", limit))
    assert len(await a.users.connections("ann")) == limit


async def test_a_user_limit_with_several_buckets_is_refused(open_node: NodeFactory,
                                                           request: pytest.FixtureRequest,
                                                           ) -> None:
    if "memory" in request.node.callspec.id:
        pytest.skip("the memory backend has no presence buckets")
    a = await open_node("node-a", buckets=4)
    with pytest.raises(ConfigError, match="presence_buckets=1"):
        await a.presence.register(seat_of("ann/x", "node-a"), max_cluster=None,
                                  seat=Seat("", 2))


async def test_route_reaches_every_other_node_of_the_user_once(open_node: NodeFactory) -> None:
    a, b, c = (await open_node("node-a"), await open_node("node-b"),
               await open_node("node-c"))
    for client, node in (("ann/1", "node-a"), ("ann/2", "node-b"), ("ann/3", "node-b"),
                         ("bob/1", "node-c")):
        await a.presence.register(seat_of(client, node, client.split("/")[0]),
                                  max_cluster=None, seat=Seat())
    envelope = encode(Envelope(Kind.USER, "node-a", "ann", "hi"))
    async with Inbox(a) as inbox_a, Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        # node-b's two, by client id (what an acknowledged send waits for); node-a is us
        route = await a.users.route("ann", envelope)
        assert sorted(route.reached) == ["ann/2", "ann/3"]
        assert route.elsewhere == {"ann/2", "ann/3"}
        got = await inbox_b.next()
        assert (got.kind, got.target, got.payload) == (Kind.USER, "ann", "hi")
        await b.routing.publish(b"marker")  # anything the route sent came before it
        assert await inbox_c.queue.get() == b"marker"  # node-c has no seat of ann
        assert await inbox_a.queue.get() == b"marker"  # node-a is the sender
    assert await a.users.route("nobody", envelope) == UserRoute([], frozenset())


async def test_route_names_the_clients_seated_on_other_nodes(open_node: NodeFactory) -> None:
    """What the sender learns in the same round trip: which of the user's client ids sit
    on another node (its own socket of one of those was replaced), received or not."""
    a, b = await open_node("node-a"), await open_node("node-b")
    for client, node in (("ann/1", "node-a"), ("ann/2", "node-a"), ("ann/3", "node-gone")):
        await a.presence.register(seat_of(client, node), max_cluster=None, seat=Seat())
    envelope = encode(Envelope(Kind.USER, "node-a", "ann", "hi"))
    assert await a.users.route("ann", envelope) == UserRoute([], frozenset({"ann/3"}))
    # ann/1 moves to node-b: its seat names node-b before node-a hears of it
    await b.presence.register(seat_of("ann/1", "node-b", conn_id="conn-ann/1-b"),
                              max_cluster=None, seat=Seat())
    async with Inbox(b) as inbox_b:
        route = await a.users.route("ann", envelope)
        assert (route.reached, route.elsewhere) == (["ann/1"], {"ann/1", "ann/3"})
        assert (await inbox_b.next()).kind is Kind.USER


async def test_a_dead_nodes_seats_are_reaped(open_node: NodeFactory) -> None:
    a, dead = await open_node("node-a"), await open_node("node-dead")
    await dead.liveness.keepalive(0.2)
    await a.liveness.keepalive(30)
    await dead.presence.register(seat_of("ann/1", "node-dead"), max_cluster=None, seat=Seat())
    await a.presence.register(seat_of("ann/2", "node-a"), max_cluster=None, seat=Seat())
    await dead.presence.register(seat_of("bob/1", "node-dead", "bob"), max_cluster=None,
                                 seat=Seat())
    reaped: tuple[str, ...] = ()
    async with asyncio.timeout(5):
        while "node-dead" not in reaped:  # bounded poll of a clock-driven expiry
            reaped = (await a.liveness.keepalive(30)).reaped
            await asyncio.sleep(0.05)
    assert [p.client_id for p in await a.users.connections("ann")] == ["ann/2"]
    assert await a.users.connections("bob") == []
    assert await a.users.count() == 1


async def test_a_clean_shutdown_frees_the_nodes_seats(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.liveness.keepalive(30)
    await a.presence.register(seat_of("ann/1", "node-a"), max_cluster=None, seat=Seat())
    await b.presence.register(seat_of("ann/2", "node-b"), max_cluster=None, seat=Seat())
    await a.liveness.unregister_node()
    assert [p.client_id for p in await b.users.connections("ann")] == ["ann/2"]


async def test_resync_restores_seats_and_forgets_stale_ones(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    kept = dataclasses.replace(seat_of("ann/1", "node-a"), info={"name": "Ann"})
    await a.presence.register(seat_of("ann/gone", "node-a"), max_cluster=None, seat=Seat())
    await a.presence.register(seat_of("ann/1", "node-a"), max_cluster=None, seat=Seat(INFO))
    await a.presence.unregister("ann/1", "conn-ann/1")  # as if the store lost it
    assert await a.liveness.resync([kept]) == Resynced()
    found = await a.users.connections("ann")
    assert [(p.client_id, p.info) for p in found] == [("ann/1", {"name": "Ann"})]


def tab_at(client_id: str, node_id: str, since: float) -> Presence:
    return Presence(client_id, node_id, f"conn-{client_id}", since, "ann")


async def test_a_resync_seats_the_users_oldest_connections_within_the_limit(
    open_node: NodeFactory,
) -> None:
    """Node a resyncs three tabs of ann (limit 2) while node b holds a seat newer than
    two of them: a's two oldest take the seats, b's tab is told to close (USER_LIMIT,
    naming its conn) and a's newest is not registered but returned to close."""
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    start = time.time()
    await b.presence.register(tab_at("ann/b", "node-b", start + 2), max_cluster=None,
                              seat=Seat("", 2))
    local = [tab_at(f"ann/a{i}", "node-a", start + i) for i in (4, 1, 0)]  # any order
    async with Inbox(b) as inbox_b:
        resynced = await a.liveness.resync(local, user_limit=UserLimit(2, "advice"))
        close = await inbox_b.next()
    assert resynced == Resynced(over_limit=(("ann/a4", "conn-ann/a4"),))
    assert (close.kind, close.target, close.ref, close.origin) == (
        Kind.CLIENT_CLOSE, "ann/b", "conn-ann/b", "node-a")
    assert close_of(str(close.payload)) == (CloseCode.USER_LIMIT, "advice")
    assert [p.client_id for p in await a.users.connections("ann")] == ["ann/a0", "ann/a1"]
    assert await a.presence.locate("ann/a4") is None
    located = await a.presence.locate("ann/b")  # until its node closes it
    assert located is not None
    assert located.node_id == "node-b"


async def test_a_resync_past_the_limit_returns_a_newer_connection_of_its_own_node(
    open_node: NodeFactory,
) -> None:
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    start = time.time()
    await b.presence.register(tab_at("ann/b", "node-b", start + 1), max_cluster=None,
                              seat=Seat("", 2))
    await a.presence.register(tab_at("ann/new", "node-a", start + 5), max_cluster=None,
                              seat=Seat("", 2))
    resynced = await a.liveness.resync([tab_at("ann/old", "node-a", start)],
                                       listed_at=start + 5, user_limit=UserLimit(2))
    assert resynced == Resynced(over_limit=(("ann/new", "conn-ann/new"),))
    assert [p.client_id for p in await b.users.connections("ann")] == ["ann/old", "ann/b"]
    seated_again = await a.liveness.resync([tab_at("ann/old", "node-a", start)],
                                           user_limit=UserLimit(2))
    assert seated_again == Resynced()  # a recorded seat stays without a check


async def test_a_resync_seats_a_connection_the_store_admitted_before_it_lost_writes(
    open_node: NodeFactory,
) -> None:
    """A store restored from older data holds the seat of a tab gone since (on node b,
    older): a's newer tab, which the store had admitted, is `seated`: it keeps its seat
    instead of closing for one no connection holds, and b's is left to b."""
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    start = time.time()
    await b.presence.register(tab_at("ann/gone", "node-b", start), max_cluster=None,
                              seat=Seat("", 1))
    live = tab_at("ann/live", "node-a", start + 1)
    resynced = await a.liveness.resync(
        [live], user_limit=UserLimit(1, seated=frozenset({live.conn_id})))
    assert resynced == Resynced()
    assert [p.client_id for p in await a.users.connections("ann")] == ["ann/gone",
                                                                        "ann/live"]
    assert await a.liveness.resync([live], user_limit=UserLimit(1)) == Resynced()


async def test_a_resync_without_a_limit_seats_every_connection(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a", buckets=1)
    start = time.time()
    local = [tab_at(f"ann/{i}", "node-a", start + i) for i in range(3)]
    assert await a.liveness.resync(local) == Resynced()
    assert len(await a.users.connections("ann")) == 3


async def test_a_user_stream_reaches_the_nodes_of_the_users_connections(
    open_node: NodeFactory,
) -> None:
    a, b, c = (await open_node("node-a"), await open_node("node-b"),
               await open_node("node-c"))
    await a.presence.register(seat_of("ann/1", "node-a"), max_cluster=None, seat=Seat())
    await b.presence.register(seat_of("ann/2", "node-b"), max_cluster=None, seat=Seat())
    await b.presence.register(seat_of("ann/3", "node-b"), max_cluster=None, seat=Seat())
    envelope = Envelope(Kind.USER, "node-c", "ann", "hello")
    async with Inbox(a) as inbox_a, Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        done = await c.history.sequence(Target("user", "ann"), envelope, size=10, ttl=60,
                                        meta_ttl=60)
        assert (done.offset, done.receivers) == (1, 3)
        assert sorted(done.clients) == ["ann/1", "ann/2", "ann/3"]  # by client id
        for inbox in (inbox_a, inbox_b):
            got = await inbox.next()
            assert (got.kind, got.target, got.offset, got.stream) == (
                Kind.USER, "ann", 1, "u:ann")
        await a.routing.publish(b"marker")
        assert await inbox_c.queue.get() == b"marker"  # node-c has no seat of ann
    history = await a.history.read("u:ann", 0, done.epoch)
    assert history.covered
    assert len(history.envelopes) == 1


async def test_a_fresh_session_of_a_user_records_the_user_stream_baseline(
    open_node: NodeFactory,
) -> None:
    a = await open_node("node-a")
    await a.history.sequence(Target("user", "ann"), Envelope(Kind.USER, "node-a", "ann", "x"),
                             size=10, ttl=60, meta_ttl=60)
    await a.sessions.activate("ann/1", fresh=True, user_id="ann")
    state = await a.sessions.load("ann/1")
    assert state is not None
    assert state.baselines["u:ann"][0] == 1
