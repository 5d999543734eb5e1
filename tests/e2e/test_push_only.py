"""A push-only handler (it sends and waits for its connection to end, never reading) against a
real uvicorn of each WebSocket implementation.

Its client closes: the next write finds the socket closed, and since nothing reads the
session (nothing would ever read the client's close), the connection is released at once,
reported with the client's own close code. Before, it took no more frames but stayed in the
pool (counted as connected) until the heartbeat removed it, waiting for a reader that never
came.

A graceful shutdown does not wait for such a session to be caught up: it never asked for a
frame, so nothing it would receive could reach the application. Before, every push-only
session added a whole close_timeout to the shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, WebSocket

from stabilizer import ConnectionEvent, WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, session
from tests.e2e.test_prepared_frames import joined
from tests.support.inproc_uvicorn import IMPLS, Served, served

pytestmark = pytest.mark.e2e

BOUND = 10.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


class PushOnly:
    """An app whose handler never reads: it waits until the node closed its socket (or the
    test lets it go)."""

    def __init__(self, manager: WebSocketConnectionManager) -> None:
        self.disconnects: list[tuple[int, str]] = []
        self.disconnected = asyncio.Event()
        self.let_go = asyncio.Event()
        self.ended = asyncio.Event()
        manager.on_disconnect(self._disconnected)
        self.app = FastAPI(lifespan=lifespan(manager))

        @self.app.websocket("/ws/{client_id}")
        async def endpoint(websocket: WebSocket, client_id: str) -> None:
            async with session(manager, websocket, client_id) as conn:
                assert conn.conn is not None
                closed = asyncio.ensure_future(conn.conn.socket_closed())
                let_go = asyncio.ensure_future(self.let_go.wait())
                await asyncio.wait((closed, let_go), return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                let_go.cancel()
            self.ended.set()

    def _disconnected(self, event: ConnectionEvent) -> None:
        self.disconnects.append((event.code, event.reason))
        self.disconnected.set()


@asynccontextmanager
async def push_only_app(ws: str, monkeypatch: pytest.MonkeyPatch, **options: float) -> (
        AsyncIterator[tuple[WebSocketConnectionManager, PushOnly, Served]]):
    manager = WebSocketConnectionManager(WebSocketConfig(**{**QUIET, **options}))
    app = PushOnly(manager)
    async with served(app.app, ws, monkeypatch) as server:
        try:
            yield manager, app, server
        finally:
            app.let_go.set()


@pytest.mark.parametrize("code", [1000, 1001, 4321])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_push_only_session_whose_client_closed_is_released_with_the_clients_code(
        ws: str, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    async with push_only_app(ws, monkeypatch, close_timeout=BOUND) as (manager, app, server):
        client = await joined(server, "alice")
        try:
            assert await manager.send_to_client("alice", "while open") is True
            client.send_close(code)
            async with asyncio.timeout(BOUND):
                while (await client.frame()).opcode != 0x8:  # the server's answer
                    pass
            assert await manager.send_to_client("alice", "after the close") is False
            await client.aclose()  # (the legacy server waits for it to end its close)
            async with asyncio.timeout(BOUND):
                await app.disconnected.wait()
                await app.ended.wait()
            assert app.disconnects == [(code, "client closed")]
            assert manager.get_connection("alice") is None
            assert manager.get_connection_count() == 0
        finally:
            await client.aclose()


@pytest.mark.parametrize("ws", IMPLS)
async def test_a_shutdown_does_not_wait_for_a_session_that_never_read(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """close_timeout is an hour: a shutdown that waited for the push-only sessions to be
    caught up would outlast the test's bound."""
    async with push_only_app(ws, monkeypatch, close_timeout=3600.0) as (manager, app, server):
        clients = [await joined(server, f"c{k}") for k in range(3)]
        shutdown = asyncio.create_task(manager.graceful_shutdown(timeout=3600.0, restart=True))
        try:
            for client in clients:  # each answers the node's close, as a client does
                async with asyncio.timeout(BOUND):
                    while (frame := await client.frame()).opcode != 0x8:
                        pass
                assert frame.payload[:2] == (1012).to_bytes(2, "big")
                client.send_close(1012)
                await client.aclose()
            async with asyncio.timeout(BOUND):
                report = await shutdown
                await app.ended.wait()
            assert (report.closed_count, report.failed_count) == (3, 0)
        finally:
            shutdown.cancel()
            for client in clients:
                await client.aclose()
