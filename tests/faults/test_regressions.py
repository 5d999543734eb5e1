"""LIBRARY DEFECTS the randomized fault checker found on current code (issue 16).

Each test pins one interleaving the checker hit, deterministically, with the seed that found
it (`python -m tests.faults --seed S` replays that schedule; being timing-dependent, a
replay usually but not always hits the defect again). Each failed on the code before its
fix. A defect found but not fixed yet is pinned with `defect(...)`, a strict xfail, so its
fix turns it into an XPASS failure and the marker must then be removed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Resynced
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket, FakeWebSocket
from tests.support.fast_nodes import dies_after_removal, sweep_ends
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
FAST: dict[str, Any] = {"node_ttl": 1.5, "op_timeout": 0.5}  # maintenance every 0.5 s
HISTORY: dict[str, Any] = {"history_size": 100, "session_ttl": 60.0}
RECOVERY = 6.0  # a bound: recovery takes about a second (maintenance every 0.5 s)
NOTICE = 15.0  # a node notices a silently dropped pub/sub connection at its next idle ping

Node = Callable[..., WebSocketConnectionManager]
PROBES = itertools.count()  # numbers each probe's text: a late probe satisfies no later one


def defect(summary: str) -> pytest.MarkDecorator:
    """A library defect found by the fault checker, open until fixed in main."""
    return pytest.mark.xfail(strict=True, reason=f"library defect (issue 16): {summary}")


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_redis.port) as forwarder:
        yield forwarder


@pytest.fixture
def node(namespace: str, make_manager: ManagerFactory, private_redis: RedisServer) -> Node:
    def build(node_id: str, url: str | None = None, **extra: Any) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=url or private_redis.url,
                                            namespace=namespace, node_id=node_id,
                                            **QUIET, **FAST, **extra))
    return build


async def until(check: Callable[[], Awaitable[bool]], limit: float = RECOVERY) -> bool:
    """Poll `check` until it holds or `limit` seconds pass; return whether it held."""
    try:
        async with asyncio.timeout(limit):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False
    return True


async def subscribers(url: str, channel: str) -> int:
    """How many connections Redis says subscribe to `channel`."""
    client = Redis.from_url(url)
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


def resyncs(caplog: pytest.LogCaptureFixture) -> int:
    """How many presence resyncs the nodes logged so far."""
    return sum(1 for record in caplog.records if record.getMessage().startswith(
        "presence of ") and "re-registered" in record.getMessage())


async def test_a_kick_sent_while_its_node_resubscribes_still_closes_the_older_socket(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seed 1188478465: after a Redis outage, c1 connected on replica-1 and replica-2 at
    once; replica-2's register kicked replica-1's socket while replica-1 was still
    resubscribing, and both sockets stayed open for good. The resync that should cover a
    lost kick runs when the subscription is lost, not after it is back: a kick published in
    between is never carried out."""
    caplog.set_level(logging.INFO, logger="stabilizer")
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    stale = FakeSocket("stale")
    await a.connect("alice", stale)
    before = resyncs(caplog)
    await proxy.drop_subscriptions(hold=True)  # a's pub/sub drops; its resubscribe waits
    assert await until(lambda: _true(resyncs(caplog) > before), NOTICE), "a never resynced"
    assert await subscribers(private_redis.url, f"{{{namespace}}}:n:a") == 0

    fresh = FakeSocket("fresh")
    await b.connect("alice", fresh)  # its kick goes to a's channel: nobody listens
    assert await b.locate_client("alice") == "b"
    proxy.restore()  # a's held subscribe goes through
    assert await until(lambda: _subscribed(private_redis.url, f"{{{namespace}}}:n:a"))

    closed = await until(lambda: _true(stale.closed is not None))
    assert closed, "both sockets of alice stay open: the missed kick was never carried out"
    assert stale.closed is not None
    assert stale.closed[0] == CloseCode.REPLACED
    assert fresh.closed is None


async def _true(value: bool) -> bool:
    return value


async def _subscribed(url: str, channel: str) -> bool:
    return await subscribers(url, channel) == 1


async def test_a_client_that_leaves_during_a_resync_leaves_no_presence_behind(
    node: Node, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 1628904753: replica-0 resynced after a stall while c5 disconnected; the resync,
    working from the list of connections it took before the disconnect, wrote c5's presence
    back after UNREGISTER had removed it, and nothing removes it again: the cluster counts
    a client that is gone. Here the resync is held between taking its list and writing."""
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    liveness = a.backend.liveness
    original = liveness.resync
    listed, go_on, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_resync(local: Any, **kwargs: Any) -> Resynced:
        if not any(presence.client_id == "alice" for presence in local):
            return await original(local, **kwargs)
        listed.set()
        await go_on.wait()
        try:
            return await original(local, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(liveness, "resync", held_resync)
    await proxy.drop_subscriptions(hold=True)  # once noticed, a resync is wanted (once)
    async with asyncio.timeout(NOTICE):
        await listed.wait()
    await a.disconnect("alice")  # UNREGISTER while the resync holds its stale list
    assert await b.locate_client("alice") is None
    go_on.set()
    proxy.restore()  # the held subscription goes through: nothing else fails
    async with asyncio.timeout(RECOVERY):
        await finished.wait()

    async def gone() -> bool:
        return await b.locate_client("alice") is None and (
            await b.get_cluster_connection_count() == 0)

    assert await until(gone), (f"presence still names {await b.locate_client('alice')} for "
                               "alice, who left")


async def test_a_replica_restarted_with_its_node_id_ends_its_predecessors_groups(
    node: Node, proxy: FaultProxy,
) -> None:
    """Seed 1518580700: replica-2 was SIGKILLed and started again as replica-2 before its
    liveness entry expired, so the survivors never reap it. The new process kept its
    predecessor's presence entries until a backend failure made it resync ("forgot 3 stale
    presence entries"), and that prune ended none of those clients' group memberships:
    they stayed in Redis for good."""
    first, b = node("a", proxy.url), node("b")
    await first.start()
    await b.start()
    await first.connect("alice", FakeSocket("alice"))
    await b.join_group("alice", "room")
    assert await b.get_group_members("room") == ["alice"]
    await proxy.cut()  # the first process of node a is gone (as after SIGKILL)
    second = node("a")
    await second.start()  # the replica comes back under the same node id

    async def no_presence() -> bool:
        return await b.locate_client("alice") is None

    assert await until(no_presence), "the restarted node did not forget alice's presence"

    async def no_membership() -> bool:
        return await b.get_group_members("room") == []

    assert await until(no_membership), (
        f"alice is gone but still a member: {await b.get_group_members('room')}")


async def test_group_members_and_deliveries_agree_after_redis_restarts_empty(
    node: Node, private_redis: RedisServer,
) -> None:
    """Seeds 938009075, 1027582001, 1248449566: after redis-server restarted (no
    persistence), the node re-registered its clients' presence, kept their local group
    memberships and went on delivering the groups' messages to them, while every node's
    get_group_members() said the groups were empty."""
    a = node("a")
    await a.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    await asyncio.to_thread(private_redis.restart)

    async def presence_back() -> bool:
        try:
            return await a.locate_client("alice") == "a"
        except Exception:
            return False

    assert await until(presence_back), "presence was not re-registered"
    await a.send_to_group("room", "after the restart")
    try:
        await alice.expect("after the restart", timeout=2.0)
        received = True
    except TimeoutError:
        received = False
    listed = "alice" in await a.get_group_members("room")
    assert received == listed, (f"alice {'receives' if received else 'does not receive'} "
                                f"room's messages but is {'' if listed else 'not '}listed")


async def test_a_remote_join_lost_with_the_owners_subscription_is_not_half_done(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 432182337: join_group(c5, g1) through replica-0 while c5's replica had lost its
    pub/sub: the call succeeded and Redis listed c5 in g1, but c5's replica never learnt
    of it, so c5 never received g1's messages (nothing reconciles after resubscribing)."""
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    channel = f"{{{namespace}}}:n:a"
    await proxy.drop_subscriptions(hold=True)
    assert await until(lambda: _unsubscribed(private_redis.url, channel))
    await b.join_group("alice", "room")  # routed to node a's channel: nobody listens
    proxy.restore()
    assert await until(lambda: _subscribed(private_redis.url, channel))

    async def consistent() -> bool:
        text = f"hello room #{next(PROBES)}"
        await b.send_to_group("room", text)
        try:
            await alice.expect(text, timeout=0.5)
            received = True
        except TimeoutError:
            received = False
        return received == ("alice" in await b.get_group_members("room"))

    assert await until(consistent), (
        f"Redis lists {await b.get_group_members('room')} in room, but alice's node never "
        "added her: she does not receive the room")


async def _unsubscribed(url: str, channel: str) -> bool:
    return await subscribers(url, channel) == 0


async def test_a_resumed_client_gets_nothing_at_or_before_its_position(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 1746475418: c3 resumed on replica-2 at offset 6 of `all`; replica-2's listener
    had lost its subscription and was still at offset 4, and when it caught up it delivered
    offsets 5 and 6 to c3 again (the protocol: "without duplicates")."""
    lagging, b = node("a", proxy.url, **HISTORY), node("b", **HISTORY)
    await lagging.start()
    await b.start()
    alice = FakeSocket("alice")
    await b.connect("alice", alice)
    await b.broadcast("one")
    first = await alice.next_json()
    await proxy.drop_subscriptions(hold=True)  # node a stops hearing the stream
    assert await until(lambda: _fewer(private_redis.url, f"{{{namespace}}}:all", 2))
    await b.broadcast("two")
    second = await alice.next_json()
    await b.disconnect("alice", code=CloseCode.GOING_AWAY)
    resumed = FakeWebSocket("alice-again")
    session = lagging.open_session(
        resumed, "alice", token=lagging.generate_reconnect_token("alice"),
        positions=json.dumps({"all": [second["offset"], second["epoch"]]}), welcome=False)
    await session.__aenter__()
    try:
        assert session.refused is None
        proxy.restore()  # node a resubscribes and catches up on `all`
        await b.broadcast("three")
        offsets: list[int] = []
        async with asyncio.timeout(RECOVERY):
            while not offsets or offsets[-1] < second["offset"] + 1:
                frame = await resumed.next_json()
                if frame.get("type") == "message":
                    offsets.append(frame["offset"])
        assert first["offset"] < second["offset"]
        assert offsets == [second["offset"] + 1], (
            f"resumed at offset {second['offset']}, then received offsets {offsets}")
    finally:
        await session.__aexit__(None, None, None)


async def _fewer(url: str, channel: str, count: int) -> bool:
    return await subscribers(url, channel) < count


async def test_a_join_that_lands_on_a_replaced_socket_reaches_the_live_one(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 868729023: c2 connected on replica-0 while replica-2 still held its older
    socket (the kick had not arrived); join_group(c2, g1) through replica-2 joined that older
    socket and Redis; the older socket was then closed as replaced, which rightly keeps the
    client's groups, but c2's live socket never joined g1: Redis lists c2, c2 never gets
    g1's messages."""
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("older"))
    await proxy.drop_subscriptions(hold=True)  # the kick for a's socket will wait
    assert await until(lambda: _unsubscribed(private_redis.url, f"{{{namespace}}}:n:a"))
    live = FakeSocket("live")
    await b.connect("alice", live)
    await a.join_group("alice", "room")  # a still holds alice's older socket: joins that
    proxy.restore()

    async def consistent() -> bool:
        text = f"hello room #{next(PROBES)}"
        await b.send_to_group("room", text)
        try:
            await live.expect(text, timeout=0.5)
            received = True
        except TimeoutError:
            received = False
        return received == ("alice" in await b.get_group_members("room"))

    assert await until(consistent), (
        f"room lists {await b.get_group_members('room')}, but alice's live socket does not "
        "receive the room")


async def test_a_broadcast_that_times_out_reaches_a_local_client_once(
    node: Node, proxy: FaultProxy,
) -> None:
    """Seed 57 (--ops 60): with history on, replica-0's Redis answered slower than
    op_timeout; broadcast() gave up on the SEQUENCE script, delivered the message to its
    own clients with offset null ("not sequenced, delivered locally only") and reported
    remote_error, but the script had reached Redis and ran: the message went out with
    offset 1 as well, and c5 on replica-0 received it twice."""
    a = node("a", proxy.url, **HISTORY)
    await a.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    proxy.set_latency(0.4)  # each way: a round trip takes longer than op_timeout (0.5 s)
    result = await a.broadcast("only once")
    assert result.remote_error is not None  # a gave up waiting for Redis
    proxy.restore()

    async def twice() -> bool:
        return sum('"only once"' in str(frame) for frame in alice.sent) > 1

    assert not await until(twice, 3.0), "alice received the broadcast twice: " + "; ".join(
        str(frame) for frame in alice.sent if '"only once"' in str(frame))


async def test_a_socket_replaced_after_a_resync_wrote_it_back_leaves_no_presence(
    node: Node, caplog: pytest.LogCaptureFixture,
) -> None:
    """Seed 10: after an empty Redis restart, c4 connected on replica-0 and replica-1 at
    once; replica-0's resync wrote c4's presence for its socket after replica-1 had taken
    the client, then replica-0 closed that socket as replaced. A replaced socket's close
    leaves presence alone (it is taken to name the newer connection), so presence named a
    socket that no longer existed, for good. Here the kick reaches node a late: after the
    newer connection left and a's resync wrote the older one back."""
    caplog.set_level(logging.INFO, logger="stabilizer")
    a, b = node("a"), node("b")
    await a.start()
    await b.start()
    stale = FakeSocket("stale")
    await a.connect("alice", stale)
    closing: Any = a._node.closing
    late: list[Any] = []
    kicked = asyncio.Event()

    def held_kick(conn: Any, *, afresh: bool = False) -> None:
        late.append(conn)
        kicked.set()

    closing.kick = held_kick
    await b.connect("alice", FakeSocket("fresh"))
    async with asyncio.timeout(RECOVERY):
        await kicked.wait()
    await b.disconnect("alice")  # presence is empty now, as an empty restart leaves it
    before = resyncs(caplog)
    a._node.ctx.want_resync()
    assert await until(lambda: _true(resyncs(caplog) > before)), "a never resynced"
    assert await b.locate_client("alice") == "a"  # written back by the resync
    del closing.kick
    for conn in late:
        closing.kick(conn)
    assert await until(lambda: _true(stale.closed is not None))
    assert stale.closed is not None
    assert stale.closed[0] == CloseCode.REPLACED

    async def gone() -> bool:
        return await b.locate_client("alice") is None and (
            await b.get_cluster_connection_count() == 0)

    assert await until(gone), (f"presence still names {await b.locate_client('alice')} for "
                               "alice, whose sockets are all closed")


async def test_a_close_whose_session_end_fails_still_ends_the_clients_groups(
    node: Node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 1206652975 (history off): c3's socket dropped as its replica's Redis connections
    were cut. The close removed c3's presence (its reply lost or not) but could not end its
    session, which is what ends a client's groups without history; the resync that follows
    an outage only ends the groups of clients whose presence it prunes, and c3 had none
    left: Redis listed c3 in g2 for good. Here the session end fails once, the rest works.
    (Where the store can, the unregister ends the groups in its own step: it is cut here
    too, before it runs, so that the session end has to do it.)"""
    from stabilizer.errors import BackendUnavailable

    a = node("a")
    await a.start()
    await a.connect("alice", FakeSocket("alice"))
    await a.join_group("alice", "room")
    sessions, presence = a.backend.sessions, a.backend.presence
    end, unregister = sessions.end, presence.unregister
    failed, cut = asyncio.Event(), asyncio.Event()

    async def cut_end(client_id: str, **options: Any) -> list[str]:
        if not failed.is_set():
            failed.set()
            raise BackendUnavailable("redis unavailable: connection reset (as a cut)")
        return list(await end(client_id, **options))

    async def cut_unregister(client_id: str, conn_id: str, **options: Any) -> bool:
        if not cut.is_set():
            cut.set()
            raise BackendUnavailable("redis unavailable: connection reset (as a cut)")
        return bool(await unregister(client_id, conn_id, **options))

    monkeypatch.setattr(sessions, "end", cut_end)
    monkeypatch.setattr(presence, "unregister", cut_unregister)
    await a.disconnect("alice")
    assert cut.is_set()
    assert failed.is_set()

    async def no_groups() -> bool:  # (the presence goes with the resync the cut asks for)
        return (await a.locate_client("alice") is None
                and await a.get_group_members("room") == []
                and await a.get_client_groups("alice") == [])

    assert await until(no_groups), (
        f"alice left, but room lists {await a.get_group_members('room')}")


async def _hang(*_: object, **__: object) -> Any:
    await asyncio.Event().wait()  # never set: the call never returns (as a dying process)


@pytest.mark.parametrize("extra", [{}, HISTORY], ids=["live", "history"])
async def test_a_join_written_into_an_emptied_redis_ends_when_its_node_dies(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, extra: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 1033052387: redis-server restarted empty; c0 joined g0 through its own replica
    before that replica's next keepalive re-registered it, and the replica was SIGKILLed
    then. The join wrote the membership for a client the store no longer knew (no presence,
    no session): nothing reaps a client no node set names, so Redis listed it for good."""
    a, b = node("a", proxy.url, **extra), node("b", **extra)
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("alice"))
    monkeypatch.setattr(a.backend.liveness, "keepalive", _hang)  # a never re-registers
    await _flush(private_redis)  # as a restart without persistence
    await a.join_group("alice", "room")
    assert await b.get_group_members("room") == ["alice"]
    await proxy.cut()  # a is gone (as after SIGKILL)

    async def no_membership() -> bool:
        return (await b.get_group_members("room") == []
                and await b.get_client_groups("alice") == [])

    assert await until(no_membership, RECOVERY + 3.0), (  # + the grace: 2 x node_ttl
        f"alice's node died, but room lists {await b.get_group_members('room')}")


@pytest.mark.parametrize("extra", [{}, HISTORY], ids=["live", "history"])
async def test_memberships_restored_by_a_node_that_dies_before_its_resync_end(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, extra: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same hole one step later: a node that finds the store emptied gives its
    memberships back first and re-registers presence after; dying in between left those
    memberships with no presence and no session behind them."""
    a, b = node("a", proxy.url, **extra), node("b", **extra)
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("alice"))
    await a.join_group("alice", "room")
    monkeypatch.setattr(a.backend.liveness, "resync", _hang)  # a dies before re-registering
    await _flush(private_redis)

    async def restored() -> bool:
        return await b.get_group_members("room") == ["alice"]

    assert await until(restored), "a never gave its memberships back"
    assert await b.locate_client("alice") is None
    await proxy.cut()

    async def no_membership() -> bool:
        return await b.get_group_members("room") == []

    assert await until(no_membership, RECOVERY + 3.0), (
        f"alice's node died, but room lists {await b.get_group_members('room')}")


async def _flush(server: RedisServer) -> None:
    client = Redis.from_url(server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


@pytest.mark.parametrize("layout", [{"redis_spread_keys": True}, {"presence_buckets": 2}],
                         ids=["spread", "buckets"])
async def test_a_node_that_dies_between_a_closes_presence_removal_and_its_groups_end(
    node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any],
) -> None:
    """Seed 1305320310 (spread layout, 2 presence buckets, history off): replica 2's Redis
    was slow; c4's close removed its presence (the reply came too late, but it ran), the
    end of its groups failed too, and replica 2 was killed before its maintenance settled
    the session: g1 listed c4 for good. Where presence and the client's group set share a
    slot the removal ends the groups itself; with history the client goes on the away list
    first, and now without history too when it may have groups. Here the node dies right
    after the removal."""
    a, b = node("a", **layout), node("b", **layout)
    await a.start()
    await b.start()
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")
    dies_after_removal(a, monkeypatch)  # node a dies right after the removal
    swept = sweep_ends((a, b), "x", monkeypatch)
    await a.disconnect("x", code=CloseCode.NORMAL)
    assert await b.locate_client("x") is None  # the removal ran
    try:
        async with asyncio.timeout(RECOVERY):
            await swept.wait()
    except TimeoutError:
        pytest.fail("no sweep ended x, who has no socket and no presence")
    assert await b.get_group_members("room") == []
