"""A manager shut down gracefully starts again when the application starts it again, as
fastapi-websocket-stabilizer 1.1.0's start() did: FastAPI's own testing pattern runs one
module-level app's lifespan once per `with TestClient(app)`, and each of those ends with
graceful_shutdown. A connect to a stopped manager that nobody started again is still
refused (ShutdownError): only start() begins a new run."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

with warnings.catch_warnings():  # starlette asks for httpx2 under its TestClient; the
    warnings.simplefilter("ignore")  # pattern tested is the one users write either way
    from fastapi.testclient import TestClient

from stabilizer import (
    ShutdownError,
    WebSocketConfig,
    WebSocketConnectionManager,
    WebSocketStabilizerError,
)
from stabilizer.backends.memory import MemoryBackend
from stabilizer.fastapi import lifespan, session
from stabilizer.node.context import Phase
from tests.support.fakes import FakeSocket, SlowToClose

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0}


def echo_app(manager: WebSocketConnectionManager) -> FastAPI:
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))

    @app.websocket("/ws/{client_id}")
    async def ws(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id, welcome=False) as conn:
            async for text in conn:
                await manager.send_to_client(client_id, f"echo:{text}")

    return app


def test_one_app_runs_under_one_test_client_after_another() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    app = echo_app(manager)
    for run in range(3):
        with TestClient(app) as client, client.websocket_connect(f"/ws/c{run}") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "echo:hi"
        assert manager.phase is Phase.STOPPED
    assert manager.stats.connects == 3  # the counters carry over


async def test_a_stopped_manager_refuses_connects_until_it_is_started_again() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    seen: list[str] = []
    manager.on_connect(lambda event: seen.append(event.client_id))

    @manager.rpc("echo")
    async def echo(call: object) -> str:
        return "echo"

    await manager.connect("one", FakeSocket("one"))
    await manager.graceful_shutdown(timeout=2.0)
    with pytest.raises(ShutdownError):
        await manager.connect("late", FakeSocket("late"))
    await manager.start()
    assert manager.phase is Phase.RUNNING
    socket = FakeSocket("two")
    await manager.connect("two", socket)
    assert manager.get_active_connections() == ["two"]
    assert await manager.send_to_client("two", "hello") is True
    await socket.expect("hello")
    assert seen == ["one", "two"]  # hooks registered before the first run still run
    with pytest.raises(Exception, match="registered"):
        manager.add_rpc("echo", echo)  # and the procedure is still there
    report = await manager.graceful_shutdown(timeout=2.0)
    assert (report.closed_count, report.failed_count) == (1, 0)


async def test_start_while_the_shutdown_runs_is_refused() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    socket = SlowToClose("slow")
    await manager.connect("slow", socket)
    stopping = asyncio.ensure_future(manager.graceful_shutdown(timeout=5.0))
    async with asyncio.timeout(5.0):
        await socket.closing.wait()
    with pytest.raises(ShutdownError, match="shutting down"):
        await manager.start()
    socket.release.set()
    async with asyncio.timeout(5.0):
        await stopping
    await manager.start()  # once it has stopped, it starts again
    assert manager.phase is Phase.RUNNING
    await manager.graceful_shutdown(timeout=2.0)


async def test_a_manager_given_its_backend_says_it_cannot_start_again() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET), backend=MemoryBackend())
    await manager.start()
    await manager.graceful_shutdown(timeout=2.0)
    with pytest.raises(WebSocketStabilizerError, match="given as backend="):
        await manager.start()


@pytest.mark.redis
async def test_a_redis_manager_started_again_is_one_of_the_cluster_again(
    redis_url: str, namespace: str,
) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET)
    manager = WebSocketConnectionManager(config)
    async with WebSocketConnectionManager(config) as other:
        await manager.connect("one", FakeSocket("one"))
        await manager.graceful_shutdown(timeout=2.0)
        assert [seen async for seen in other.get_cluster_connections()] == []
        await manager.start()
        socket = FakeSocket("two")
        await manager.connect("two", socket)
        assert [seen.client_id async for seen in other.get_cluster_connections()] == ["two"]
        assert await other.send_to_client("two", "across") is True
        await socket.expect("across")
        result = await other.broadcast("to everyone")
        assert result.remote_nodes == 1
        await socket.expect("to everyone")
    await manager.graceful_shutdown(timeout=2.0)


@pytest.mark.redis
def test_a_manager_given_its_redis_client_starts_again_in_the_next_loop(
    redis_url: str, namespace: str,
) -> None:
    """One `with TestClient(app)` after another, with the application's own client
    (redis=): the client's pooled connections belong to the loop that ended."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    manager = WebSocketConnectionManager(WebSocketConfig(namespace=namespace, **QUIET),
                                         redis=client)

    async def one_run(client_id: str) -> None:
        await manager.start()
        socket = FakeSocket(client_id)
        await manager.connect(client_id, socket)
        assert await manager.send_to_client(client_id, "hello") is True
        await socket.expect("hello")
        await manager.graceful_shutdown(timeout=2.0)

    asyncio.run(one_run("a"))
    asyncio.run(one_run("b"))
    assert manager.stats.connects == 2


async def test_a_shutdown_during_the_start_leaves_no_loop_running() -> None:
    """A graceful_shutdown that lands while start() waits for its backend: the start then
    spawns nothing (its loops would run on a stopped node)."""
    opened = asyncio.Event()
    release = asyncio.Event()

    class SlowToOpen(MemoryBackend):
        async def open(self, *args: object, **kwargs: object) -> None:
            opened.set()
            await release.wait()
            await super().open(*args, **kwargs)  # type: ignore[arg-type]

    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET), backend=SlowToOpen())
    starting = asyncio.ensure_future(manager.start())
    async with asyncio.timeout(5.0):
        await opened.wait()
    stopping = asyncio.ensure_future(manager.graceful_shutdown(timeout=2.0))
    release.set()  # (the shutdown lets the start end before it closes the backend)
    async with asyncio.timeout(5.0):
        await stopping
        await starting
    assert manager.phase is Phase.STOPPED
    assert manager._node.ctx.tasks.running() == []


class StallsAfterOpening(MemoryBackend):
    """A backend whose node's start stalls in forgetting a predecessor (until the start's
    own bound on a backend call, op_timeout per round trip, gives up on it); it records
    what is asked of it once closed."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = asyncio.Event()
        self.asked_once_closed: list[str] = []
        share_keys = self.tokens.share_keys

        async def stall(session_ttl: float = 0.0) -> int:
            self.stalled.set()
            await asyncio.Event().wait()
            return 0

        async def share(offer: bytes, held: Any) -> Any:
            if not self.available:
                self.asked_once_closed.append("share_keys")
            return await share_keys(offer, held)

        self.liveness.forget_predecessor = stall  # type: ignore[method-assign]
        self.tokens.share_keys = share  # type: ignore[method-assign]


async def test_a_shutdown_during_the_start_closes_the_backend_once_the_start_ended() -> None:
    """The start goes on calling its backend after an await (a stalled one gives up at its
    bound): a shutdown that lands meanwhile lets the start end, and the start, finding the
    node draining, asks nothing more of it. Before, the shutdown closed the backend under
    the start, which then went on calling it (on Redis, reconnecting for good)."""
    backend = StallsAfterOpening()
    manager = WebSocketConnectionManager(WebSocketConfig(op_timeout=0.05, **QUIET),
                                         backend=backend)
    starting = asyncio.ensure_future(manager.start())
    async with asyncio.timeout(5.0):
        await backend.stalled.wait()
        await manager.graceful_shutdown(timeout=5.0)
        await starting
    assert manager.phase is Phase.STOPPED
    assert manager._node.ctx.tasks.running() == []
    assert backend.asked_once_closed == []
    assert backend.available is False


async def test_a_start_whose_backend_fails_to_open_can_be_tried_again() -> None:
    """Not a backend that is down (the node runs without it and retries): one that cannot
    open here at all raises, and leaves the node as it was, not running without loops."""
    failures = [RuntimeError("this client belongs to another event loop")]

    class FailsOnce(MemoryBackend):
        async def open(self, *args: object, **kwargs: object) -> None:
            if failures:
                raise failures.pop()
            await super().open(*args, **kwargs)  # type: ignore[arg-type]

    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET), backend=FailsOnce())
    with pytest.raises(RuntimeError, match="another event loop"):
        await manager.start()
    assert manager.phase is Phase.NEW
    await manager.start()
    assert manager.phase is Phase.RUNNING
    assert manager._node.ctx.tasks.running() != []  # its loops run
    socket = FakeSocket("a")
    await manager.connect("a", socket)
    await manager.graceful_shutdown(timeout=2.0)
