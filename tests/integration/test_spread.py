"""The spread key layout (keys.py): each group's keys and channel in the group's own slot,
each client's session and group set in the client's, the default on a Redis Cluster.

Real servers: a three-master Cluster, and a standalone Redis asked to spread (the same
steps, one server). What is checked: the group traffic reaches every master, and the
stepwise end of a session recovers from a node that stops halfway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stabilizer import WebSocketConfig
from stabilizer.backends.base import Backend, Presence, SessionGone
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.spread import SpreadSteps
from stabilizer.errors import BackendUnavailable
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind, encode
from tests.support.redis_server import RedisClusterServers

pytestmark = pytest.mark.redis

Opener = Callable[[str], Awaitable[Backend]]


@pytest.fixture(params=["cluster", "standalone"])
async def open_spread(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Opener]:
    """Backends with the spread layout that share one store (sessions on)."""
    tasks = TaskOwner()
    opened: list[RedisBackend] = []

    async def factory(node_id: str) -> Backend:
        backend: RedisBackend
        if request.param == "cluster":
            url = request.getfixturevalue("redis_cluster").url
            backend = RedisBackend(RedisCluster.from_url(url), namespace=namespace,
                                   owns_client=True, presence_buckets=4)
        else:
            url = request.getfixturevalue("redis_url")
            backend = RedisBackend(Redis.from_url(url), namespace=namespace,
                                   owns_client=True, spread=True)
        assert backend.keys.spread
        await backend.open(node_id, tasks, sessions=True)
        opened.append(backend)
        return backend

    yield factory
    assert await tasks.stop(2.0) == []
    for backend in opened:
        await backend.aclose()


async def end_cut_short(node: Backend, client_id: str, groups: list[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Open `client_id`'s session on `node`, join `groups`, then end the session with the
    node stopping after the groups moved to the leaving set, before any was left."""
    await node.sessions.activate(client_id, fresh=True, conn_id="conn-1")
    for group in groups:
        await node.groups.join(client_id, group)

    async def stops_here(self: SpreadSteps, by_group: object) -> None:
        raise BackendUnavailable("the node stopped here")

    with monkeypatch.context() as patch:
        patch.setattr(SpreadSteps, "leave_groups", stops_here)
        with pytest.raises(BackendUnavailable):
            await node.sessions.end(client_id)


async def test_group_traffic_reaches_every_master(redis_cluster: RedisClusterServers,
                                                  namespace: str) -> None:
    tasks = TaskOwner()
    backend = RedisBackend(RedisCluster.from_url(redis_cluster.url), namespace=namespace,
                           owns_client=True)
    masters = [Redis.from_url(node.url) for node in redis_cluster.nodes]
    try:
        await backend.open("node-a", tasks, sessions=True)
        for master in masters:
            await master.config_resetstat()
        for i in range(30):
            group = f"room-{i}"
            await backend.groups.join(f"client-{i}", group)
            await backend.history.sequence(
                Target("group", group), Envelope(Kind.GROUP, "node-a", group, "hello"),
                size=10, ttl=60, meta_ttl=60)
            await backend.groups.publish(
                group, encode(Envelope(Kind.GROUP, "node-a", group, "live")))
        for master in masters:
            stats = await master.info("commandstats")
            # every master sequenced and published some of the groups' messages
            assert stats["cmdstat_xadd"]["calls"] > 0, stats
            assert stats["cmdstat_spublish"]["calls"] > 0, stats
            assert stats["cmdstat_sadd"]["calls"] > 0, stats
    finally:
        assert await tasks.stop(2.0) == []
        await backend.aclose()
        for master in masters:
            await master.aclose()


async def test_an_end_cut_short_is_finished_by_a_sweep(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await open_spread("node-a"), await open_spread("node-b")
    assert isinstance(a, RedisBackend)
    await end_cut_short(a, "alice", ["room", "lobby"], monkeypatch)
    assert await b.groups.members("room") == ["alice"]  # the group still lists it
    assert await b.sessions.load("alice") is None  # the session itself ended
    # the end's lease holds alice on the away list; it is made to have run out, and
    # another node's sweep finishes the end
    assert await a.client.zscore(a.keys.away, "alice") is not None
    await a.client.zadd(a.keys.away, {"alice": 0})
    assert "alice" in await b.sessions.sweep()
    assert await b.groups.members("room") == []
    assert await b.groups.members("lobby") == []
    assert await b.groups.of_client("alice") == []
    assert await b.sessions.sweep() == []  # nothing left over


async def test_a_sweep_spares_a_session_resumed_while_it_ran(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await open_spread("node-a"), await open_spread("node-b")
    assert isinstance(a, RedisBackend)
    await a.sessions.activate("bob", fresh=True, conn_id="conn-1")
    await a.groups.join("bob", "room")
    await a.sessions.suspend("bob", 60.0)
    await a.client.zadd(a.keys.away, {"bob": 0})  # (due now, not in a minute)
    finish = SpreadSteps.finish
    resumed = asyncio.Event()

    async def resume_first(self: SpreadSteps, clients: list[str], deadline: int,
                           mode: str, **kwargs: Any) -> dict[str, list[str]]:
        if "bob" in clients and not resumed.is_set():
            resumed.set()  # bob comes back between the pick and the end (a resume
            await a.presence.register(Presence("bob", "node-a", "conn-2", time.time()),
                                      max_cluster=None)  # registers, then reopens)
            await a.sessions.activate("bob", fresh=False, conn_id="conn-2")
        return await finish(self, clients, deadline, mode, **kwargs)

    monkeypatch.setattr(SpreadSteps, "finish", resume_first)
    assert "bob" not in await b.sessions.sweep()
    assert resumed.is_set()
    assert await b.groups.members("room") == ["bob"]
    state = await b.sessions.load("bob")
    assert state is not None
    assert state.groups == ["room"]


async def left_without_expiry(node: RedisBackend, client: str, conn_id: str) -> None:
    """`client` connected through `conn_id` and joined the room; its node removed its
    presence (which put it on the away list), then died before the session's expiry was
    set: the session is live, and no presence names it. Made due now."""
    await node.presence.register(Presence(client, "node-a", conn_id, time.time()),
                                 max_cluster=None)
    await node.sessions.activate(client, fresh=True, conn_id=conn_id)
    await node.groups.join(client, "room")
    assert await node.presence.unregister(client, conn_id, away=60.0)
    await node.client.zadd(node.keys.away, {client: 0})  # (due now, not in a minute)


async def test_a_sweep_ends_a_live_session_whose_client_has_no_presence(
        open_spread: Opener) -> None:
    """Before, the sweep skipped a live session and dropped the client from the list: the
    room kept it for good."""
    a = await open_spread("node-a")
    assert isinstance(a, RedisBackend)
    await left_without_expiry(a, "gone", "conn-1")
    assert await a.sessions.sweep() == ["gone"]
    assert await a.groups.members("room") == []
    assert await a.sessions.load("gone") is None


async def test_a_sweep_keeps_a_live_session_resumed_before_its_end(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but the client resumed on another connection between the sweep's pick
    and its end (a new holder): the session and its groups stay."""
    a = await open_spread("node-a")
    assert isinstance(a, RedisBackend)
    await left_without_expiry(a, "back", "conn-1")
    orphans = SpreadSteps._orphans

    async def back_first(self: SpreadSteps, order: list[str], replies: list[object]) -> None:
        await a.presence.register(Presence("back", "node-b", "conn-2", time.time()),
                                  max_cluster=None)
        await a.sessions.activate("back", fresh=False, conn_id="conn-2")
        await a.presence.unregister("back", "conn-2")  # (gone again: only the holder tells)
        await orphans(self, order, replies)

    monkeypatch.setattr(SpreadSteps, "_orphans", back_first)
    assert await a.sessions.sweep() == []
    assert await a.groups.members("room") == ["back"]
    state = await a.sessions.load("back")
    assert state is not None
    assert state.groups == ["room"]


async def test_a_fresh_session_leaves_the_groups_of_the_last_one(open_spread: Opener) -> None:
    a, b = await open_spread("node-a"), await open_spread("node-b")
    await a.sessions.activate("carol", fresh=True, conn_id="conn-1")
    await a.groups.join("carol", "room", '{"status": "here"}')
    assert await b.groups.count_presence("room") == 1
    await b.sessions.activate("carol", fresh=True, conn_id="conn-2")
    assert await a.groups.members("room") == []
    assert await a.groups.count_presence("room") == 0
    state = await a.sessions.load("carol")
    assert state is not None
    assert state.groups == []


@pytest.mark.parametrize(("setting", "spread"), [(None, True), (False, False), (True, True)])
async def test_a_cluster_spreads_unless_told_not_to(redis_cluster: RedisClusterServers,
                                                    setting: bool | None, spread: bool) -> None:
    config = WebSocketConfig(redis_url=redis_cluster.url, redis_cluster=True,
                             redis_spread_keys=setting)
    backend = RedisBackend.from_config(config)
    try:
        assert backend.keys.spread is spread
        tag = backend.keys.tag
        assert backend.keys.group("room").startswith(tag) is not spread
    finally:
        await backend.aclose()


async def test_a_join_cut_short_between_its_steps_is_completed_by_the_settle(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's group set got the group, the group's set never got the client (Redis
    stopped answering in between: seeds 954669970 and 904607435 of the fault checker): the
    reconcile a settle runs makes both say the same."""
    a = await open_spread("node-a")
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    group_step = SpreadSteps._group

    async def unanswered(self: SpreadSteps, group: str, action: str, *args: object,
                         **kwargs: object) -> object:
        if action == "join":
            raise BackendUnavailable("backend did not answer")
        return await group_step(self, group, action, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SpreadSteps, "_group", unanswered)
    with pytest.raises(BackendUnavailable):
        await a.groups.join("alice", "room")
    monkeypatch.setattr(SpreadSteps, "_group", group_step)
    assert await a.groups.of_client("alice") == ["room"]
    assert await a.groups.members("room") == []  # half done

    assert await a.groups.reconcile({"alice": set()}) == {"alice": ["room"]}
    assert await a.groups.members("room") == ["alice"]
    await a.groups.leave("alice", "room")  # and it leaves like any other membership
    assert await a.groups.members("room") == []
    assert await a.groups.of_client("alice") == []


async def test_an_end_cut_short_for_a_client_back_again_is_finished_by_its_settle(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replaced connection's groups were moved to the leaving set, then the end stopped;
    the client is connected again (no sweep will pick it): the settle leaves them."""
    a = await open_spread("node-a")
    await end_cut_short(a, "alice", ["room", "lobby"], monkeypatch)
    assert isinstance(a, RedisBackend)
    # back, on a live session again (a revival cannot bring back the ended one: SessionGone;
    # its node joins what it wants again)
    with pytest.raises(SessionGone):
        await a.sessions.activate("alice", fresh=False, conn_id="conn-2")
    await a.client.hset(a.keys.session("alice"), "_", "conn-2")
    await a.groups.join("alice", "lobby")
    assert await a.groups.members("room") == ["alice"]  # still listed: the end stopped

    assert await a.groups.reconcile({"alice": {"lobby"}}) == {"alice": ["lobby"]}
    assert await a.groups.members("room") == []
    assert await a.groups.members("lobby") == ["alice"]
    assert await a.groups.reconcile({"alice": {"lobby"}}) == {"alice": ["lobby"]}


async def alice_in_room(open_spread: Opener) -> tuple[Backend, Backend]:
    """Two nodes; alice's session opened on the first, and alice in the room."""
    a = await open_spread("node-a")
    b = await open_spread("node-b")
    await a.sessions.activate("alice", fresh=True, conn_id="conn-1")
    await a.groups.join("alice", "room")
    return a, b


async def test_a_settle_racing_a_leave_on_another_node_leaves_no_member_behind(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leave takes the client out of the group's set, then the group out of the client's.
    A settle on another node (one that doubts the client: seed 1915023262 of the fault
    checker) that read the client's set before the second step, and put the membership back
    after the first, must not outlast the leave: the group's set ends without the client."""
    a, b = await alice_in_room(open_spread)
    between = asyncio.Event()
    go_on = asyncio.Event()
    client_step = SpreadSteps._client

    async def paused_leave(self: SpreadSteps, client_id: str, action: str,
                           *args: object) -> tuple[str, bool]:
        if action == "leave" and not go_on.is_set():
            between.set()
            await go_on.wait()
        return await client_step(self, client_id, action, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(SpreadSteps, "_client", paused_leave)
    leaving = asyncio.create_task(a.groups.leave("alice", "room"))
    await between.wait()
    assert await a.groups.members("room") == []  # (its first step ran)
    await b.groups.reconcile({"alice": ()})  # lists the room still: puts alice back
    go_on.set()
    await leaving

    assert await a.groups.of_client("alice") == []
    assert await a.groups.members("room") == []


async def test_a_settle_whose_undo_got_no_answer_leaves_no_member_behind(
        open_spread: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settle read the client's set listing the group, a fresh session then left the
    group, and the settle put the membership back: the step that takes it out again got no
    answer (the node stalled). The settle marked what it was putting back first, so the
    next settle of that client takes it out; before, nothing ever did."""
    a, b = await alice_in_room(open_spread)
    listed = asyncio.Event()
    go_on = asyncio.Event()
    complete = SpreadSteps._complete
    group_step = SpreadSteps._group
    stalled = False

    async def paused_complete(self: SpreadSteps, *args: object) -> None:
        listed.set()
        await go_on.wait()
        await complete(self, *args)  # type: ignore[arg-type]

    async def stalls(self: SpreadSteps, group: str, action: str, *args: object) -> object:
        if stalled and action == "leave":
            raise BackendUnavailable("backend did not answer")
        return await group_step(self, group, action, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(SpreadSteps, "_complete", paused_complete)
    monkeypatch.setattr(SpreadSteps, "_group", stalls)
    settling = asyncio.create_task(b.groups.reconcile({"alice": ()}))
    await listed.wait()  # (it read alice's set: the room)
    await a.sessions.activate("alice", fresh=True, conn_id="conn-2")  # leaves the room
    assert await a.groups.members("room") == []
    stalled = True
    go_on.set()
    with pytest.raises(BackendUnavailable):
        await settling
    stalled = False
    assert await a.groups.members("room") == ["alice"]  # (put back, not taken out)

    assert await b.groups.reconcile({"alice": ()}) == {"alice": []}
    assert await a.groups.members("room") == []
    assert await a.groups.of_client("alice") == []
