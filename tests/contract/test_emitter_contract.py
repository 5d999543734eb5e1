"""One emitter contract, run on every topology the replicas can use: plain Redis, Redis
Cluster (sharded pub/sub, presence over 4 buckets), Sentinel, and a MemoryHub (replicas in
one process: the emitter shares their event loop and their hub), each with two replicas
(managers on fake sockets) and an emitter given their settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from stabilizer import (
    BackendUnavailable,
    CloseCode,
    ConfigError,
    ConnectionNotFoundError,
    Emitter,
    Identity,
    MemoryBackend,
    MemoryHub,
    SyncEmitter,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.conftest import ManagerFactory
from tests.integration.test_groups_history import resume_on
from tests.integration.test_users import Tab
from tests.support.fakes import FakeSocket
from tests.support.redis_server import (
    RedisClusterServers,
    RedisSentinelSetup,
    RedisServer,
    refusing_port,
)

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
REDIS_TOPOLOGIES = [pytest.param(name, marks=pytest.mark.redis) for name in
                    ("redis", "cluster", "sentinel")]
TOPOLOGIES = [*REDIS_TOPOLOGIES, "memory-hub"]

Replicas = tuple[WebSocketConnectionManager, WebSocketConnectionManager, Emitter]
Build = Callable[..., Awaitable[Replicas]]


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> dict[str, object]:
    """The Redis settings replicas and emitter share on one topology."""
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    if request.param == "cluster":
        return {"redis_url": request.getfixturevalue("redis_cluster").url,
                "redis_cluster": True, "presence_buckets": 4}
    if request.param == "memory-hub":
        return {"hub": MemoryHub()}
    return {"redis_url": request.getfixturevalue("redis_sentinel").url}


@pytest.fixture
async def replicas(make_manager: ManagerFactory, topology: dict[str, object],
                   namespace: str) -> AsyncIterator[Build]:
    """Build two started replicas (node-a, node-b) and an emitter with their settings."""
    emitters: list[Emitter] = []

    async def build(**settings: Any) -> Replicas:
        shared = {**topology, "namespace": namespace, **settings}
        hub = shared.pop("hub", None)
        a, b = (make_manager(WebSocketConfig(node_id=f"node-{name}", **QUIET, **shared),
                             backend=MemoryBackend(hub) if hub is not None else None)
                for name in "ab")
        await a.start()
        await b.start()
        emitter = Emitter(client=hub, **shared)  # type: ignore[arg-type]  # checked there
        emitters.append(emitter)
        return a, b, emitter

    yield build
    for emitter in emitters:
        await emitter.aclose()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` until it holds (state a replica settles in the background)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def applied(emitter: Emitter, group: str, *socks: FakeSocket) -> None:
    """Wait until `group`'s messages reach every one of `socks`, i.e. their replicas applied
    the remote joins (README: a group message sent before that reaches no one), then skip
    the probes this sent."""
    waiting = list(socks)
    async with asyncio.timeout(5.0):
        while waiting:
            await emitter.send_to_group(group, "probe")
            for sock in list(waiting):
                with contextlib.suppress(TimeoutError):
                    await sock.next(timeout=0.05)  # a probe: the only traffic they get
                    waiting.remove(sock)
    await emitter.send_to_group(group, "probes end")
    for sock in socks:  # in order after every probe: one subscription carries the group
        await sock.expect("probes end")


async def left(manager: WebSocketConnectionManager, client_id: str, group: str) -> None:
    """Wait until the client's node applied a remote leave of `group` (no group message
    reaches it from then on: local membership goes before the node unsubscribes)."""
    async def gone() -> bool:
        conn = manager.get_connection(client_id)
        return conn is not None and group not in conn.groups

    await until(gone)


async def located_nowhere(emitter: Emitter, client_id: str) -> bool:
    return await emitter.locate_client(client_id) is None


# --- sends ---------------------------------------------------------------------------


async def test_send_to_client_reaches_it_on_either_replica(replicas: Build) -> None:
    a, b, emitter = await replicas()
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    assert await emitter.send_to_client("x", {"to": "x"}) is True
    assert await emitter.send_to_client("y", "to y") is True
    assert await x.next_json() == {"to": "x"}
    assert await y.next() == "to y"
    assert await emitter.send_to_client("ghost", "nobody holds it") is False


async def test_broadcast_reaches_every_replica(replicas: Build) -> None:
    a, b, emitter = await replicas()
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    result = await emitter.broadcast({"n": 1}, exclude_client="y")
    assert (result.remote_nodes, result.total, result.offset) == (2, 0, None)
    assert await x.next_json() == {"n": 1}
    await emitter.broadcast(b"\x00bytes")
    assert await y.next() == b"\x00bytes"  # y missed only the first
    assert await x.next() == b"\x00bytes"


async def test_send_to_user_reaches_every_connection(replicas: Build) -> None:
    a, b, emitter = await replicas()
    ann = Identity("ann", {"name": "Ann"})
    tabs = [Tab(a, "ann/1", ann), Tab(b, "ann/2", ann), Tab(b, "bob/1", Identity("bob"))]
    try:
        for tab in tabs:
            await tab.ready()
        assert await emitter.send_to_user("ann", {"text": "hi"}) == 2
        for tab in tabs[:2]:
            assert await tab.ws.next_json() == {"text": "hi"}
        assert await emitter.send_to_user("nobody", "x") == 0
        assert await emitter.send_to_client("bob/1", "sentinel") is True
        assert await tabs[2].ws.next() == "sentinel"  # nothing for ann came before it
        assert await emitter.disconnect_user("ann", code=4403, reason="banned") == 2
        for tab in tabs[:2]:
            assert await tab.ws.wait_closed() == (4403, "banned")
        assert tabs[2].ws.closed is None
    finally:
        for tab in tabs:
            tab.task.cancel()
        await asyncio.gather(*(tab.task for tab in tabs), return_exceptions=True)


# --- groups and disconnects ----------------------------------------------------------


async def test_join_and_leave_a_group_for_a_client_on_a_replica(replicas: Build) -> None:
    a, b, emitter = await replicas()
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    await emitter.join_group("x", "room")
    await emitter.join_group("y", "room")
    assert await emitter.get_group_members("room") == ["x", "y"]
    await applied(emitter, "room", x, y)
    result = await emitter.send_to_group("room", "to the room", exclude_client="x")
    assert result.remote_nodes == 2
    assert await y.next() == "to the room"

    await emitter.leave_group("y", "room")
    assert await emitter.get_group_members("room") == ["x"]
    assert await emitter.get_client_groups("y") == []
    await left(b, "y", "room")
    await emitter.send_to_group("room", "after y left")
    assert await x.next() == "after y left"  # x was excluded from "to the room"
    assert await emitter.send_to_client("y", "sentinel") is True
    assert await y.next() == "sentinel"  # and y got nothing of the room's
    await emitter.leave_group("y", "room")  # not a member: no error
    with pytest.raises(ConnectionNotFoundError):
        await emitter.join_group("ghost", "room")


async def test_a_remote_join_is_in_effect_once_the_connection_lists_it(
    replicas: Build,
) -> None:
    _a, b, emitter = await replicas()
    y = FakeSocket("y")
    await b.connect("y", y)
    await emitter.join_group("y", "room")
    conn = b.get_connection("y")
    assert conn is not None
    async with asyncio.timeout(5.0):
        while "room" not in conn.groups:  # "the groups this connection is a local member of"
            await asyncio.sleep(0)
    await emitter.send_to_group("room", "hello")
    assert await y.next() == "hello"


async def test_disconnect_client_closes_it_wherever_it_is(replicas: Build) -> None:
    a, b, emitter = await replicas()
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    assert await emitter.disconnect_client("y", code=4409, reason="logged out") is True
    assert await y.wait_closed() == (4409, "logged out")
    assert x.closed is None
    await until(lambda: located_nowhere(emitter, "y"))
    assert await emitter.disconnect_client("y") is False
    assert await emitter.disconnect_client("x") is True
    assert await x.wait_closed() == (CloseCode.NORMAL, "disconnected by the server")
    await until(lambda: located_nowhere(emitter, "x"))
    assert await emitter.get_cluster_connection_count() == 0


# --- cluster queries -----------------------------------------------------------------


async def test_cluster_queries_see_every_replica(replicas: Build) -> None:
    a, b, emitter = await replicas()
    await a.connect("x", FakeSocket("x"))
    await b.connect("y", FakeSocket("y"))
    tab = Tab(b, "ann/1", Identity("ann", {"name": "Ann"}))
    try:
        await tab.ready()
        await emitter.join_group("x", "room")
        assert await emitter.get_cluster_connection_count() == 3
        assert await emitter.locate_client("x") == "node-a"
        assert await emitter.locate_client("ann/1") == "node-b"
        assert await emitter.locate_client("ghost") is None
        found = {p.client_id: p.node_id async for p in emitter.get_cluster_connections(batch=1)}
        assert found == {"x": "node-a", "y": "node-b", "ann/1": "node-b"}
        assert await emitter.get_group_members("room") == ["x"]
        assert await emitter.get_client_groups("x") == ["room"]
        assert await emitter.get_client_groups("y") == []
        [seat] = await emitter.get_user_connections("ann")
        assert (seat.client_id, seat.node_id, seat.info) == ("ann/1", "node-b", {"name": "Ann"})
        assert await emitter.get_cluster_user_count() == 1
        assert sorted(await emitter.get_nodes()) == ["node-a", "node-b"]  # not the emitter
    finally:
        tab.task.cancel()
        await asyncio.gather(tab.task, return_exceptions=True)


async def test_presence_queries_answer_as_the_replicas_do(replicas: Build) -> None:
    a, b, emitter = await replicas()
    await a.connect("x", FakeSocket("x"))
    await b.connect("y", FakeSocket("y"))
    tab = Tab(b, "ann/1", Identity("ann"))
    try:
        await tab.ready()
        assert await emitter.get_presence("room") == {}
        assert await emitter.count_presence("room") == 0
        await a.join_group("x", "room", presence={"name": "X"})
        await b.join_group("ann/1", "room", presence={"name": "Ann"})
        await b.join_group("y", "room")  # a member with no metadata: not in the presence
        await a.update_presence("x", "room", {"name": "X", "typing": True})
        expected = {"ann": [{"client_id": "ann/1", "meta": {"name": "Ann"}}],
                    "x": [{"client_id": "x", "meta": {"name": "X", "typing": True}}]}
        assert await emitter.get_presence("room") == expected
        assert await emitter.get_presence("room") == await a.get_presence("room")
        assert await emitter.count_presence("room") == 2 == await b.count_presence("room")
        await emitter.leave_group("x", "room")
        assert await emitter.get_presence("room") == {"ann": expected["ann"]}
        assert await emitter.count_presence("room") == 1
        assert await emitter.get_presence("elsewhere") == {}
        for group in ("", "g" * 257, None):
            with pytest.raises(ValueError, match="group"):
                await emitter.get_presence(group)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="group"):
                await emitter.count_presence(group)  # type: ignore[arg-type]
    finally:
        tab.task.cancel()
        await asyncio.gather(tab.task, return_exceptions=True)


# --- history -------------------------------------------------------------------------


async def test_with_history_emitted_messages_are_sequenced_and_resumed(replicas: Build) -> None:
    a, b, emitter = await replicas(**HISTORY)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await emitter.join_group("alice", "room")
    await b.broadcast("from b")
    sent = await emitter.broadcast("from the emitter")
    assert sent.offset == 2  # the replicas' sequence, continued
    frames = [await alice.next_json() for _ in range(2)]
    assert [(f["offset"], f["data"]) for f in frames] == [(1, "from b"), (2, "from the emitter")]
    assert frames[1]["epoch"] == sent.epoch
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")

    assert (await emitter.broadcast("missed-1")).offset == 3
    await emitter.send_to_group("room", "missed-2")
    assert await emitter.send_to_client("alice", "missed-3") is True  # kept for her session
    assert await emitter.send_to_client("ghost", "no session") is False

    sock, (recovered, replayed, failed) = await resume_on(
        b, "alice", {"all": (frames[1]["offset"], frames[1]["epoch"])})
    assert (recovered, replayed, failed) == (True, 3, [])
    replays = [await sock.next_json() for _ in range(4)]
    assert sorted(f["data"] for f in replays[:3]) == ["missed-1", "missed-2", "missed-3"]
    assert replays[3]["type"] == "resume"
    assert a.stats.stream_gaps == b.stats.stream_gaps == 0


# --- the blocking emitter ------------------------------------------------------------


@pytest.mark.parametrize("topology", REDIS_TOPOLOGIES, indirect=True)
async def test_sync_emitter_reaches_replicas_from_a_worker_thread(
    replicas: Build, topology: dict[str, object], namespace: str
) -> None:
    a, b, emitter = await replicas()
    x, y = FakeSocket("x"), FakeSocket("y")
    await a.connect("x", x)
    await b.connect("y", y)
    sync = SyncEmitter(namespace=namespace, **topology)  # type: ignore[arg-type]

    def sends() -> list[object]:  # a Celery task's thread: never the event loop's
        return [sync.send_to_client("y", "direct"), sync.send_to_client("ghost", "x"),
                sync.broadcast("to all").remote_nodes, sync.join_group("y", "room")]

    def queries() -> list[object]:
        return [sync.send_to_group("room", "to the room").remote_nodes,
                sync.get_group_members("room"), sync.get_cluster_connection_count(),
                sync.locate_client("y"), sorted(sync.get_nodes()),
                sorted(p.client_id for p in sync.get_cluster_connections())]

    def presence() -> list[object]:
        return [sync.get_presence("room"), sync.count_presence("room")]

    def kick() -> list[object]:
        with sync:
            return [sync.leave_group("y", "room"), sync.get_client_groups("y"),
                    sync.disconnect_client("x", code=4400, reason="kicked")]

    try:
        assert await asyncio.to_thread(sends) == [True, False, 2, None]
        assert await y.next() == "direct"
        assert await x.next() == await y.next() == "to all"
        await applied(emitter, "room", y)
        assert await asyncio.to_thread(queries) == [1, ["y"], 2, "node-b",
                                                    ["node-a", "node-b"], ["x", "y"]]
        assert await y.next() == "to the room"
        await b.update_presence("y", "room", {"name": "Y"})
        assert await asyncio.to_thread(presence) == [
            {"y": [{"client_id": "y", "meta": {"name": "Y"}}]}, 1]
        assert await asyncio.to_thread(kick) == [None, [], True]
        assert await x.wait_closed() == (4400, "kicked")
    finally:
        await asyncio.to_thread(sync.close)  # its thread, if a step above failed


# --- Redis down ----------------------------------------------------------------------


@contextlib.contextmanager
def private_topology(name: str) -> Iterator[tuple[dict[str, object], Callable[[], None]]]:
    """A topology only this test uses: its settings, and a way to take all of its Redis
    down (servers killed; a Sentinel keeps answering, naming a master that is gone)."""
    if name == "redis":
        with RedisServer() as server:
            yield {"redis_url": server.url}, lambda: server.stop(kill=True)
    elif name == "cluster":
        with RedisClusterServers() as cluster:
            def down() -> None:
                for node in cluster.nodes:
                    node.stop(kill=True)

            yield {"redis_url": cluster.url, "redis_cluster": True}, down
    else:
        with RedisSentinelSetup() as setup:
            def down() -> None:
                setup.master.stop(kill=True)
                setup.replica.stop(kill=True)

            yield {"redis_url": setup.url}, down


def every_operation(emitter: Emitter) -> list[Callable[[], Awaitable[object]]]:
    return [
        lambda: emitter.broadcast("x"), lambda: emitter.send_to_group("room", "x"),
        lambda: emitter.send_to_client("bob", "x"), lambda: emitter.send_to_user("ann", "x"),
        lambda: emitter.disconnect_client("bob"), lambda: emitter.disconnect_user("ann"),
        lambda: emitter.join_group("bob", "room"), lambda: emitter.leave_group("bob", "room"),
        emitter.get_cluster_connection_count, lambda: emitter.locate_client("bob"),
        lambda: emitter.get_group_members("room"), lambda: emitter.get_client_groups("bob"),
        lambda: emitter.get_user_connections("ann"), emitter.get_cluster_user_count,
        emitter.get_nodes, lambda: emitter.get_presence("room"),
        lambda: emitter.count_presence("room")]


@pytest.mark.parametrize("name", TOPOLOGIES)
async def test_redis_going_down_raises_backend_unavailable(name: str, namespace: str) -> None:
    with private_topology(name) as (settings, down):
        async with Emitter(namespace=namespace, op_timeout=0.5,
                           **settings) as emitter:  # type: ignore[arg-type]
            assert await emitter.get_cluster_connection_count() == 0
            down()
            for operation in every_operation(emitter):
                with pytest.raises(BackendUnavailable):
                    await operation()

            def blocking() -> None:
                with SyncEmitter(namespace=namespace, op_timeout=0.5,
                                 **settings) as sync:  # type: ignore[arg-type]
                    with pytest.raises(BackendUnavailable):
                        sync.send_to_client("bob", "x")
                    with pytest.raises(BackendUnavailable):
                        sync.get_cluster_connection_count()

            await asyncio.to_thread(blocking)


@pytest.mark.parametrize("settings", [
    pytest.param({"redis_url": "redis://127.0.0.1:{port}"}, id="redis"),
    pytest.param({"redis_url": "redis://127.0.0.1:{port}", "redis_cluster": True},
                 id="cluster"),
    pytest.param({"redis_url": "redis+sentinel://127.0.0.1:{port}/nowhere"}, id="sentinel"),
])
async def test_an_unreachable_redis_raises_backend_unavailable(settings: dict[str, object],
                                                               namespace: str) -> None:
    with refusing_port() as port:  # (a port picked free at collection could be taken since)
        url = str(settings["redis_url"]).format(port=port)
        async with Emitter(namespace=namespace, op_timeout=0.5,
                           **{**settings, "redis_url": url}) as emitter:  # type: ignore[arg-type]
            for operation in every_operation(emitter):  # the first use, then every next one
                with pytest.raises(BackendUnavailable):
                    await operation()


# --- memory ----------------------------------------------------------------------------


async def test_on_a_memory_hub_only_an_emitter_in_the_replicas_loop_reaches_them(
    make_manager: ManagerFactory, namespace: str
) -> None:
    hub = MemoryHub()
    config = WebSocketConfig(namespace=namespace, **QUIET)  # type: ignore[arg-type]
    a = make_manager(config, backend=MemoryBackend(hub))
    await a.start()
    assert a.backend.name == "memory"
    with pytest.raises(ConfigError, match="needs the replicas' Redis"):
        Emitter(config=a.config)  # no Redis, no hub: nothing to reach the replicas by
    with pytest.raises(ConfigError, match="its own event loop"):
        SyncEmitter(client=hub, namespace=namespace)
    with pytest.raises(ConfigError, match=r"redis\.asyncio client"):
        Emitter(client=a.backend, namespace=namespace)  # a backend is not the hub
    with pytest.raises(ConfigError, match="no redis_url"):
        Emitter("redis://127.0.0.1:1", client=hub, namespace=namespace)
    sock = FakeSocket("x")
    await a.connect("x", sock)
    async with Emitter(client=hub, namespace=namespace) as emitter:
        assert await emitter.send_to_client("x", "through the hub") is True
        assert await sock.next() == "through the hub"
        assert await emitter.get_nodes() == [a.node_id]  # the emitter is no node
    assert hub.inboxes.keys() == {a.node_id}
