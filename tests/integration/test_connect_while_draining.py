"""connect() (the seed's API) refused because the node is shutting down closes the socket
the application had accepted, with the node's shutdown code and its retry advice (as
session() does), before it raises ShutdownError. Before, it raised and left the socket
open: the seed's Quick Start handler then ended on the exception, and its client got a
close without a code (1006) or the server's generic one, and no advice on when to come
back."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, WebSocket

from stabilizer import CloseCode, ShutdownError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.memory import MemoryBackend
from stabilizer.backends.records import Presence, Registration
from tests.conftest import ManagerFactory
from tests.support.clients import connect
from tests.support.fakes import FakeSocket, SlowToClose
from tests.support.inproc_uvicorn import served

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
RESTARTING = {"shutdown_mode": "restart", "retry_jitter": 1.0, **QUIET}
BOUND = 5.0


def assert_told_to_come_back(closed: tuple[int, str | None] | None) -> None:
    assert closed is not None
    code, reason = closed
    assert code == CloseCode.SERVICE_RESTART
    assert reason is not None
    assert set(json.loads(reason)) == {"retry_ms"}


async def test_a_connect_during_the_drain_closes_the_socket_with_the_shutdown_code(
        make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(close_timeout=BOUND, **RESTARTING))
    held = SlowToClose("held")
    await manager.connect("held", held)
    stopping = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))
    async with asyncio.timeout(BOUND):
        await held.closing.wait()  # draining
    late = FakeSocket("late")
    with pytest.raises(ShutdownError):
        await manager.connect("late", late)
    assert_told_to_come_back(late.closed)
    held.release.set()
    async with asyncio.timeout(BOUND):
        await stopping
    after = FakeSocket("after")  # and once stopped, the same
    with pytest.raises(ShutdownError):
        await manager.connect("after", after)
    assert_told_to_come_back(after.closed)


async def test_a_connect_that_the_drain_overtakes_at_the_store_closes_the_socket(
        make_manager: ManagerFactory) -> None:
    """The shutdown begins while the admission waits for its registration."""
    registering, release = asyncio.Event(), asyncio.Event()

    class SlowToRegister(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            register = self.presence.register

            async def slow(presence: Presence, **kwargs: object) -> Registration:
                if presence.client_id == "late":
                    registering.set()
                    await release.wait()
                return await register(presence, **kwargs)  # type: ignore[arg-type]

            self.presence.register = slow  # type: ignore[method-assign]

    manager = make_manager(WebSocketConfig(**RESTARTING), backend=SlowToRegister())
    await manager.start()
    late = FakeSocket("late")
    connecting = asyncio.create_task(manager.connect("late", late))
    async with asyncio.timeout(BOUND):
        await registering.wait()
    stopping = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))
    await asyncio.sleep(0)  # (the shutdown has begun: the node refuses)
    release.set()
    with pytest.raises(ShutdownError):
        async with asyncio.timeout(BOUND):
            await connecting
    assert_told_to_come_back(late.closed)
    async with asyncio.timeout(BOUND):
        await stopping


async def test_the_seed_quick_start_handler_hands_its_client_the_shutdown_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's handler accepts, then connects: over a real server, its client reads
    1012 and the retry advice."""
    manager = WebSocketConnectionManager(WebSocketConfig(**RESTARTING))
    app = FastAPI()
    refused: list[str] = []

    @app.websocket("/seed/{client_id}")
    async def seed(websocket: WebSocket, client_id: str) -> None:
        await websocket.accept()
        try:
            await manager.connect(client_id, websocket)
        except ShutdownError:
            refused.append(client_id)  # (the seed's handler let it propagate)

    await manager.start()
    await manager.graceful_shutdown(timeout=2.0)
    async with served(app, "websockets-sansio", monkeypatch) as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}/seed/late", open_timeout=BOUND)
        async with asyncio.timeout(BOUND):
            await ws.wait_closed()
    assert refused == ["late"]
    assert ws.close_code == CloseCode.SERVICE_RESTART
    assert set(json.loads(ws.close_reason or "")) == {"retry_ms"}
