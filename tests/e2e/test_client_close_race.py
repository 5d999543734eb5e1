"""A client's close that races a send, against a real uvicorn of each WebSocket implementation.

The client closes (its close frame answered by the server) while its handler is busy, so
the session has not read the close yet, and the application sends to it meanwhile. Under
every implementation the send is not delivered (False, counted as failed), and
on_disconnect (and the log) report the client's own close code with "client closed".

Before, the failed write won: the connection was closed as 1011 "send failed", whatever the
client had said. And under the legacy `websockets` implementation the send was not even
failed: the server's send waited for the closing handshake to end instead of raising, so
it was counted as delivered (the other two raise at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, WebSocket

from stabilizer import (
    BroadcastFailedError,
    ConnectionEvent,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.fastapi import lifespan, session
from tests.e2e.test_prepared_frames import joined
from tests.support.inproc_uvicorn import IMPLS, served
from tests.support.raw_ws import RawClient

pytestmark = pytest.mark.e2e

BOUND = 10.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


class Busy:
    """An app whose handler, on the message "hold", stops reading until `go` is set."""

    def __init__(self, manager: WebSocketConnectionManager) -> None:
        self.holding = asyncio.Event()
        self.go = asyncio.Event()
        self.disconnects: list[tuple[int, str]] = []
        self.disconnected = asyncio.Event()
        manager.on_disconnect(self._disconnected)
        self.app = FastAPI(lifespan=lifespan(manager))

        @self.app.websocket("/ws/{client_id}")
        async def endpoint(websocket: WebSocket, client_id: str) -> None:
            async with session(manager, websocket, client_id) as conn:
                async for message in conn:
                    if message == "hold":
                        self.holding.set()
                        await self.go.wait()

    def _disconnected(self, event: ConnectionEvent) -> None:
        self.disconnects.append((event.code, event.reason))
        self.disconnected.set()


@asynccontextmanager
async def closed_while_busy(ws: str, monkeypatch: pytest.MonkeyPatch,
                            code: int) -> AsyncIterator[tuple[WebSocketConnectionManager, Busy,
                                                              RawClient]]:
    """A client "alice" that closed with `code` (the server answered its close frame) while
    its handler does not read; the handler reads again when the block exits."""
    manager = WebSocketConnectionManager(WebSocketConfig(close_timeout=BOUND, **QUIET))
    busy = Busy(manager)
    async with served(busy.app, ws, monkeypatch) as server:
        client = await joined(server, "alice")
        try:
            client.send_text("hold")
            async with asyncio.timeout(BOUND):
                await busy.holding.wait()
                client.send_close(code)
                while (await client.frame()).opcode != 0x8:  # the server's answer
                    pass
            yield manager, busy, client
            await client.aclose()
            busy.go.set()
            async with asyncio.timeout(BOUND):
                await busy.disconnected.wait()
        finally:
            busy.go.set()
            await client.aclose()


@pytest.mark.parametrize("code", [1000, 1001])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_client_close_that_races_a_broadcast_is_reported_as_the_clients(
        ws: str, code: int, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stabilizer")
    async with closed_while_busy(ws, monkeypatch, code) as (manager, busy, _):
        with contextlib.suppress(BroadcastFailedError):  # (the next test's concern)
            await manager.broadcast({"text": "racing the close"})
    assert busy.disconnects == [(code, "client closed")]
    assert "'alice' disconnected (conn" in caplog.text
    assert f"code {code})" in caplog.text
    assert "send failed" not in caplog.text
    assert manager.get_connection("alice") is None


@pytest.mark.parametrize("ws", IMPLS)
async def test_a_send_to_a_client_that_closed_is_not_delivered(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with closed_while_busy(ws, monkeypatch, 1000) as (manager, _, _):
        with pytest.raises(BroadcastFailedError) as failed:
            await manager.broadcast({"text": "after the close"})
        result = failed.value.result
        assert result is not None
        assert (result.total, result.succeeded, result.failed) == (1, 0, 1)
        assert await manager.send_to_client("alice", "after the close") is False
