"""The emitter against two real replicas (managers on fake sockets) sharing a real Redis:
every operation, with history on and off, the envelopes on the wire, bad input, and Redis
going away."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import (
    BackendUnavailable,
    CloseCode,
    ConfigError,
    ConnectionNotFoundError,
    Emitter,
    Identity,
    InvalidClientIdError,
    SyncEmitter,
    WebSocketConfig,
    WebSocketConnectionManager,
    WebSocketStabilizerError,
)
from stabilizer.pure.wire import Envelope, Kind, decode, encode
from tests.conftest import ManagerFactory
from tests.integration.test_groups_history import resume_on, subscribers
from tests.integration.test_users import Tab, tabs_of
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
MODES = [pytest.param({}, id="live"), pytest.param(HISTORY, id="history")]

Pair = tuple[WebSocketConnectionManager, WebSocketConnectionManager, Emitter]
Build = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def emitters() -> AsyncIterator[list[Emitter]]:
    made: list[Emitter] = []
    yield made
    for emitter in made:
        await emitter.aclose()


@pytest.fixture
def replicas(make_manager: ManagerFactory, redis_url: str, namespace: str,
             emitters: list[Emitter]) -> Build:
    """Two started replicas (node-a, node-b) and an emitter with the same settings."""
    async def build(**settings: Any) -> Pair:
        a, b = (make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                             node_id=f"node-{name}", **QUIET, **settings))
                for name in "ab")
        await a.start()
        await b.start()
        emitter = Emitter(redis_url, namespace=namespace, **settings)
        emitters.append(emitter)
        return a, b, emitter
    return build


async def data(sock: FakeSocket, history: bool) -> Any:
    """The next application message a socket received (history frames unwrapped)."""
    if not history:
        return await sock.next()
    wrapped = await sock.next_json()
    assert wrapped["type"] == "message", wrapped
    return wrapped["data"]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` until it holds (state that settles in the background)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("settings", MODES)
async def test_broadcast_reaches_clients_on_every_replica(replicas: Build,
                                                          settings: dict[str, Any]) -> None:
    a, b, emitter = await replicas(**settings)
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    result = await emitter.broadcast({"n": 1}, exclude_client="y")
    assert result.remote_nodes == 2
    assert (result.total, result.succeeded, result.failed) == (0, 0, 0)
    assert result.offset == (1 if settings else None)
    assert await data(x, bool(settings)) == '{"n":1}'
    await emitter.broadcast("sentinel")
    assert await data(y, bool(settings)) == "sentinel"  # y was excluded from the first
    assert await data(x, bool(settings)) == "sentinel"
    await emitter.broadcast(b"\x00binary")
    if not settings:
        assert await y.next() == b"\x00binary"


async def test_with_history_emitter_and_replicas_share_one_sequence(replicas: Build) -> None:
    a, b, emitter = await replicas(**HISTORY)
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    await a.broadcast("from a")
    assert (await emitter.broadcast("from the emitter")).offset == 2
    await b.broadcast("from b")
    assert (await emitter.broadcast("from the emitter again")).offset == 4
    for sock in (x, y):
        frames = [await sock.next_json() for _ in range(4)]
        assert [f["offset"] for f in frames] == [1, 2, 3, 4]
        assert [f["data"] for f in frames] == ["from a", "from the emitter", "from b",
                                               "from the emitter again"]
        assert len({f["epoch"] for f in frames}) == 1
    assert a.stats.stream_gaps == b.stats.stream_gaps == 0


async def test_a_resuming_client_replays_what_the_emitter_sent(replicas: Build) -> None:
    a, b, emitter = await replicas(**HISTORY)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await emitter.join_group("alice", "room")
    await emitter.broadcast("before")
    seen = await alice.next_json()
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")

    await emitter.broadcast("missed-1")
    await emitter.send_to_group("room", "missed-2")
    assert await emitter.send_to_client("alice", "missed-3")  # kept for her session
    assert await emitter.send_to_user("alice-user", "nobody holds it") == 0

    sock, (recovered, replayed, failed) = await resume_on(
        b, "alice", {"all": (seen["offset"], seen["epoch"])})
    assert (recovered, replayed, failed) == (True, 3, [])
    frames = [await sock.next_json() for _ in range(4)]
    assert sorted(f["data"] for f in frames[:3]) == ["missed-1", "missed-2", "missed-3"]
    assert frames[3]["type"] == "resume"


@pytest.mark.parametrize("settings", MODES)
async def test_send_to_client_says_whether_a_replica_holds_it(replicas: Build,
                                                              settings: dict[str, Any]) -> None:
    _a, b, emitter = await replicas(**settings)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    assert await emitter.send_to_client("bob", {"hi": "bob"}) is True
    assert await data(bob, bool(settings)) == '{"hi":"bob"}'
    if settings:
        assert (await emitter.send_to_client("bob", "again")) is True
        assert (await bob.next_json())["stream"] == "c:bob"
    assert await emitter.send_to_client("ghost", "x") is False


@pytest.mark.parametrize("settings", MODES)
async def test_users_are_reached_and_kicked_on_every_replica(replicas: Build,
                                                             settings: dict[str, Any]) -> None:
    a, b, emitter = await replicas(**settings)
    async with tabs_of((a, "ann/1"), (b, "ann/2")) as tabs:
        other = Tab(b, "bob/1", Identity("bob"))
        await other.ready()
        assert await emitter.send_to_user("ann", {"text": "hi"}) == 2
        for tab in tabs:
            frame = await tab.ws.next_json()
            assert (json.loads(frame["data"]) if settings else frame) == {"text": "hi"}
        assert await emitter.send_to_user("nobody", "x") == 0
        assert await emitter.disconnect_user("ann", code=4403, reason="banned") == 2
        for tab in tabs:
            assert await tab.ws.wait_closed() == (4403, "banned")
        assert other.ws.closed is None
        await until(lambda: _no_connections(emitter, "ann"))
        assert await emitter.get_cluster_user_count() == 1
        assert await emitter.disconnect_user("ann") == 0
        other.task.cancel()


async def _no_connections(emitter: Emitter, user: str) -> bool:
    return not await emitter.get_user_connections(user)


@pytest.mark.parametrize("settings", MODES)
async def test_disconnect_client_closes_it_wherever_it_is(replicas: Build,
                                                          settings: dict[str, Any]) -> None:
    a, b, emitter = await replicas(**settings)
    bob, carol = FakeSocket("bob"), FakeSocket("carol")
    await b.connect("bob", bob)
    await a.connect("carol", carol)
    await emitter.join_group("bob", "room")
    await emitter.join_group("carol", "hall")
    assert await emitter.disconnect_client("bob", code=4400, reason="kicked") is True
    assert await bob.wait_closed() == (4400, "kicked")
    assert carol.closed is None
    await until(lambda: _located_nowhere(emitter, "bob"))
    if settings:  # with history, a close other than 1000 keeps the session resumable
        assert await emitter.get_group_members("room") == ["bob"]
    else:  # without, a disconnect ends the groups
        await until(lambda: _no_members(emitter, "room"))
    assert await emitter.disconnect_client("bob") is False
    assert await emitter.disconnect_client("carol") is True  # 1000: the session ends
    assert await carol.wait_closed() == (1000, "disconnected by the server")
    await until(lambda: _no_members(emitter, "hall"))
    assert await emitter.get_cluster_connection_count() == 0


async def test_a_malformed_close_request_is_dropped_and_counted(
    replicas: Build, redis_url: str, namespace: str
) -> None:
    _a, b, emitter = await replicas()
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    client = Redis.from_url(redis_url)
    try:
        for payload in ("not json", '{"code": 999, "reason": "x"}', None):
            raw = encode(Envelope(Kind.CLIENT_CLOSE, "emitter:forged", "bob", payload))
            assert await client.publish(f"{{{namespace}}}:n:node-b", raw) == 1
    finally:
        await client.aclose()

    async def counted() -> bool:
        return b.stats.wire_errors == 2  # the one without a payload is no request at all

    await until(counted)
    await emitter.send_to_client("bob", "still open")
    assert await bob.next() == "still open"
    assert bob.closed is None


async def _located_nowhere(emitter: Emitter, client_id: str) -> bool:
    return await emitter.locate_client(client_id) is None


async def _no_members(emitter: Emitter, group: str) -> bool:
    return not await emitter.get_group_members(group)


@pytest.mark.parametrize("settings", MODES)
async def test_join_and_leave_a_group_for_a_client_on_a_replica(
    replicas: Build, settings: dict[str, Any]
) -> None:
    a, b, emitter = await replicas(**settings)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    await emitter.join_group("bob", "room")
    assert await emitter.get_group_members("room") == ["bob"]
    assert await emitter.get_client_groups("bob") == ["room"]
    await until(lambda: _followers_are(b, "room", 1))  # b follows the group now
    await a.send_to_group("room", "from a")
    assert await data(bob, bool(settings)) == "from a"
    result = await emitter.send_to_group("room", "from the emitter")
    assert result.remote_nodes == 1
    assert await data(bob, bool(settings)) == "from the emitter"

    await emitter.leave_group("bob", "room")
    assert await emitter.get_group_members("room") == []
    await until(lambda: _followers_are(b, "room", 0))  # its last local member left
    assert (await emitter.send_to_group("room", "after leaving")).remote_nodes == 0
    await emitter.send_to_client("bob", "sentinel")
    assert await data(bob, bool(settings)) == "sentinel"
    with pytest.raises(ConnectionNotFoundError):
        await emitter.join_group("ghost", "room")


async def _followers_are(manager: WebSocketConnectionManager, group: str, count: int) -> bool:
    return await subscribers(manager, group) == count


async def test_cluster_queries_see_every_replica(replicas: Build) -> None:
    a, b, emitter = await replicas()
    await a.connect("x", FakeSocket("x"))
    await b.connect("y", FakeSocket("y"))
    await a.join_group("x", "room")
    async with tabs_of((b, "ann/1")):
        assert await emitter.get_cluster_connection_count() == 3
        assert await emitter.locate_client("x") == "node-a"
        assert await emitter.locate_client("ann/1") == "node-b"
        assert await emitter.locate_client("ghost") is None
        found = {p.client_id: p.node_id async for p in emitter.get_cluster_connections(batch=1)}
        assert found == {"x": "node-a", "y": "node-b", "ann/1": "node-b"}
        with pytest.raises(ValueError, match="batch"):  # at the call (Redis: a syntax error)
            emitter.get_cluster_connections(batch=0)
        assert await emitter.get_group_members("room") == ["x"]
        assert await emitter.get_client_groups("x") == ["room"]
        assert await emitter.get_client_groups("y") == []
        [seat] = await emitter.get_user_connections("ann")
        assert (seat.client_id, seat.node_id, seat.info) == ("ann/1", "node-b", {"name": "Ann"})
        assert await emitter.get_cluster_user_count() == 1
        assert sorted(await emitter.get_nodes()) == ["node-a", "node-b"]


@pytest.mark.parametrize("settings", MODES)
async def test_the_emitter_registers_nothing(replicas: Build, redis_url: str, namespace: str,
                                             settings: dict[str, Any]) -> None:
    _a, b, emitter = await replicas(**settings)
    await b.connect("bob", FakeSocket("bob"))
    await emitter.broadcast("hi")
    await emitter.send_to_client("bob", "hi")
    await emitter.join_group("bob", "room")
    await emitter.get_cluster_connection_count()
    client = Redis.from_url(redis_url)
    try:
        tag = f"{{{namespace}}}:"
        names = {key.decode().removeprefix(tag) async for key in client.scan_iter(match=f"{tag}*")}
        made = {"secret", "nodes", "p", "nc:node-b", "cg:bob", "g:room"}  # by the replicas
        if settings:  # the streams of "all" and of bob, and bob's session
            made |= {"h:all", "hm:all", "h:c:bob", "hm:c:bob", "s:bob"}
        assert names - {"nodereports"} == made  # (reports come with a replica's keepalive)
        assert set(await client.hkeys(f"{tag}nodereports")) <= {b"node-a", b"node-b"}
        nodes = await client.zrange(f"{{{namespace}}}:nodes", 0, -1)
        assert sorted(nodes) == [b"node-a", b"node-b"]
        assert await client.hkeys(f"{{{namespace}}}:p") == [b"bob"]
    finally:
        await client.aclose()
    assert sorted(await emitter.get_nodes()) == ["node-a", "node-b"]


async def test_a_replica_sees_the_envelopes_another_replica_would_send(
    replicas: Build, redis_url: str, namespace: str
) -> None:
    a, b, emitter = await replicas()
    await b.connect("bob", FakeSocket("bob"))
    async with tabs_of((b, "ann/1")):
        channels = [f"{{{namespace}}}:all", f"{{{namespace}}}:gc:room",
                    f"{{{namespace}}}:n:node-b"]
        async with _captured(redis_url, channels) as captured:
            for sender in (a, emitter):
                await sender.broadcast({"k": [1, 2]}, exclude_client="bob")
                await sender.send_to_group("room", b"raw", exclude_client="bob")
                await sender.send_to_client("bob", "direct")
                await sender.send_to_user("ann", "to ann")
                await sender.join_group("bob", "room")
                await sender.leave_group("bob", "room")
            sent = await captured(12)
    by_origin: dict[str, list[Envelope]] = {}
    for envelope in sent:
        by_origin.setdefault(envelope.origin, []).append(envelope)
    assert set(by_origin) == {"node-a", emitter.origin}
    assert emitter.origin.startswith("emitter:")
    as_replica = [dataclasses.replace(e, origin="node-a") for e in by_origin[emitter.origin]]
    assert as_replica == by_origin["node-a"]


@pytest.mark.parametrize("settings", MODES)
async def test_bad_input_gets_a_clear_exception(replicas: Build,
                                                settings: dict[str, Any]) -> None:
    _, _, emitter = await replicas(**settings)
    for client_id in ("", "x" * 322, 42, "\ud800"):
        with pytest.raises(InvalidClientIdError):
            await emitter.send_to_client(client_id, "x")  # type: ignore[arg-type]
        with pytest.raises(InvalidClientIdError):
            await emitter.disconnect_client(client_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidClientIdError):
            await emitter.join_group(client_id, "room")  # type: ignore[arg-type]
        with pytest.raises(InvalidClientIdError):
            await emitter.locate_client(client_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidClientIdError):
            await emitter.broadcast("x", exclude_client=client_id)  # type: ignore[arg-type]
    for group in ("", "g" * 257, None):
        with pytest.raises(ValueError, match="group"):
            await emitter.send_to_group(group, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            await emitter.leave_group("bob", group)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            await emitter.get_group_members(group)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            await emitter.get_presence(group)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            await emitter.count_presence(group)  # type: ignore[arg-type]
    for user in ("", "u" * 257, 7):
        with pytest.raises(ValueError, match="user id"):
            await emitter.send_to_user(user, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="user id"):
            await emitter.disconnect_user(user)  # type: ignore[arg-type]
    for code in (999, 1005, 5000, True):
        with pytest.raises(ValueError, match="close code"):
            await emitter.disconnect_user("ann", code=code)
        with pytest.raises(ValueError, match="close code"):
            await emitter.disconnect_client("ann", code=code)
    with pytest.raises(ValueError, match="reason"):
        await emitter.disconnect_client("ann", reason=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await emitter.broadcast(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await emitter.send_to_client("bob", {"nan": float("nan")})


async def test_redis_down_raises_backend_unavailable_and_the_emitter_heals(
    private_redis: RedisServer, namespace: str, emitters: list[Emitter]
) -> None:
    emitter = Emitter(private_redis.url, namespace=namespace, op_timeout=0.5)
    emitters.append(emitter)
    assert await emitter.get_cluster_connection_count() == 0
    private_redis.stop(kill=True)
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: emitter.broadcast("x"), lambda: emitter.send_to_client("bob", "x"),
        lambda: emitter.send_to_user("ann", "x"), lambda: emitter.disconnect_client("bob"),
        lambda: emitter.join_group("bob", "room"), emitter.get_cluster_connection_count,
        lambda: emitter.locate_client("bob"), lambda: emitter.get_group_members("room")]
    for operation in operations:
        with pytest.raises(BackendUnavailable):
            await operation()
    never = Emitter(private_redis.url, namespace=namespace, op_timeout=0.5)
    emitters.append(never)
    with pytest.raises(BackendUnavailable):  # its first use: Redis was never reachable
        await never.broadcast("x")
    private_redis.start()

    async def answers(which: Emitter) -> bool:
        try:
            return await which.get_cluster_connection_count() == 0
        except BackendUnavailable:
            return False

    await until(lambda: answers(emitter))
    await until(lambda: answers(never))
    assert (await never.broadcast("x")).remote_nodes == 0


async def test_construction_and_lifecycle(redis_url: str, namespace: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        Emitter()
    with pytest.raises(ConfigError, match="setting"):
        Emitter(redis_url, no_such_setting=1)
    with pytest.raises(ConfigError, match="namespace"):
        Emitter(redis_url, namespace="has space")
    with pytest.raises(ConfigError):
        SyncEmitter(history_size=10)
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, history_size=7)
    async with Emitter(config=config) as with_history:
        assert with_history.history is True
        assert with_history.config.namespace == namespace
    async with Emitter(config=config, history_size=0) as without:
        assert without.history is False

    client = Redis.from_url(redis_url)
    try:
        async with Emitter(client=client, namespace=namespace) as emitter:
            assert await emitter.get_cluster_connection_count() == 0
        assert await client.ping()  # a client passed in stays open
        with pytest.raises(WebSocketStabilizerError, match="closed"):
            await emitter.broadcast("x")
    finally:
        await client.aclose()


async def test_an_emitter_serves_the_loop_it_first_ran_on(redis_url: str, namespace: str,
                                                          emitters: list[Emitter]) -> None:
    emitter = Emitter(redis_url, namespace=namespace)
    emitters.append(emitter)
    await emitter.get_cluster_connection_count()

    def elsewhere() -> None:
        asyncio.run(emitter.get_cluster_connection_count())

    with pytest.raises(WebSocketStabilizerError, match="event loop"):
        await asyncio.to_thread(elsewhere)


async def test_sync_emitter_does_what_the_emitter_does(replicas: Build, redis_url: str,
                                                       namespace: str) -> None:
    _a, b, _ = await replicas(**HISTORY)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    sync = SyncEmitter(redis_url, namespace=namespace, **HISTORY)

    def join() -> list[object]:
        return [sync.send_to_client("bob", {"from": "celery"}),
                sync.join_group("bob", "room")]

    def work() -> list[object]:
        with sync:
            return [sync.send_to_group("room", "to the room").offset,
                    sync.get_group_members("room"), sync.get_client_groups("bob"),
                    sync.get_cluster_connection_count(),
                    [p.client_id for p in sync.get_cluster_connections()],
                    sync.locate_client("bob"), sorted(sync.get_nodes())]

    assert await asyncio.to_thread(join) == [True, None]
    conn = b.get_connection("bob")
    assert conn is not None
    async with asyncio.timeout(5):  # a remote join takes effect when bob's node applies it
        while "room" not in conn.groups:
            await asyncio.sleep(0.01)
    assert await asyncio.to_thread(work) == [1, ["bob"], ["room"], 1, ["bob"], "node-b",
                                             ["node-a", "node-b"]]
    assert json.loads((await bob.next_json())["data"]) == {"from": "celery"}
    assert (await bob.next_json())["data"] == "to the room"
    with pytest.raises(WebSocketStabilizerError, match="closed"):
        await asyncio.to_thread(sync.get_nodes)


async def test_sync_emitter_raises_backend_unavailable_when_redis_is_down(
    private_redis: RedisServer, namespace: str
) -> None:
    url = private_redis.url
    private_redis.stop(kill=True)

    def work() -> None:
        with SyncEmitter(url, namespace=namespace, op_timeout=0.5) as sync:
            with pytest.raises(BackendUnavailable):
                sync.broadcast("x")
            with pytest.raises(BackendUnavailable):
                sync.get_cluster_connection_count()

    await asyncio.to_thread(work)


class _Capture:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def __call__(self, count: int) -> list[Envelope]:
        found: list[Envelope] = []
        async with asyncio.timeout(5):
            while len(found) < count:
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    found.append(decode(message["data"]))
        return found


class _captured:
    """Subscribe to `channels` on a raw connection; yield a reader of the next envelopes."""

    def __init__(self, redis_url: str, channels: list[str]) -> None:
        self._client = Redis.from_url(redis_url)
        self._channels = channels
        self._pubsub: Any = None

    async def __aenter__(self) -> _Capture:
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(*self._channels)
        async with asyncio.timeout(5):  # confirmed before anything is sent
            confirmed = 0
            while confirmed < len(self._channels):
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
        return _Capture(self._pubsub)

    async def __aexit__(self, *exc: object) -> None:
        await self._pubsub.aclose()
        await self._client.aclose()
