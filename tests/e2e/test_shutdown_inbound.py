"""What a client sent before a graceful shutdown closed its socket reaches the application.

The handler is held on the client's first message while the client sends more; the node
starts shutting down (DRAINING), then the handler is released. Every message the client sent
reaches the handler, while the node is still draining, before the session ends; only then
does the client get its 1012. Before, the session stopped reading as soon as the shutdown
took the connection out of service: what the client had sent meanwhile was dropped, and the
client, whose send() had succeeded, was never told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, session
from stabilizer.node.context import Phase
from tests.support.inproc_uvicorn import IMPLS, Served, served

pytestmark = pytest.mark.e2e

BOUND = 10.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
LINES = [f"line-{k}" for k in range(20)]


class Held:
    """An app whose handler records each message with the node's phase, and on "hold"
    stops reading until `go` is set."""

    def __init__(self, manager: WebSocketConnectionManager) -> None:
        self.holding = asyncio.Event()
        self.go = asyncio.Event()
        self.handled: list[tuple[str | bytes, Phase]] = []
        self.ended = asyncio.Event()
        self.app = FastAPI(lifespan=lifespan(manager))

        @self.app.websocket("/ws/{client_id}")
        async def endpoint(websocket: WebSocket, client_id: str) -> None:
            async with session(manager, websocket, client_id) as conn:
                async for message in conn:
                    self.handled.append((message, manager.phase))
                    if message == "hold":
                        self.holding.set()
                        await self.go.wait()
            self.ended.set()


@asynccontextmanager
async def held_app(ws: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[WebSocketConnectionManager, Held, Served]]:
    manager = WebSocketConnectionManager(WebSocketConfig(close_timeout=BOUND, **QUIET))
    held = Held(manager)
    async with served(held.app, ws, monkeypatch) as server:
        try:
            yield manager, held, server
        finally:
            held.go.set()


async def shut_down_while_held(manager: WebSocketConnectionManager, held: Held) -> None:
    """Start the shutdown while the handler is held, release it, and wait for both ends."""
    async with asyncio.timeout(BOUND):
        await held.holding.wait()
    shutdown = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND, restart=True))
    async with asyncio.timeout(BOUND):
        while manager.phase is Phase.RUNNING:
            await asyncio.sleep(0)
        held.go.set()
        await held.ended.wait()
        await shutdown


async def closed_by_server(client: ClientConnection) -> int:
    """Wait for the server's close; return its code."""
    async with asyncio.timeout(BOUND):
        await client.wait_closed()
    assert client.close_code is not None
    return client.close_code


@pytest.mark.parametrize("ws", IMPLS)
async def test_what_a_plain_client_sent_before_the_shutdown_reaches_the_handler(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (held_app(ws, monkeypatch) as (manager, held, server),
                websockets.connect(f"ws://127.0.0.1:{server.port}/ws/alice") as client):
        async with asyncio.timeout(BOUND):
            assert json.loads(await client.recv())["type"] == "session"
        for text in ["hold", *LINES]:
            await client.send(text)
        await shut_down_while_held(manager, held)
        assert await closed_by_server(client) == CloseCode.SERVICE_RESTART
    assert [message for message, _ in held.handled] == ["hold", *LINES]
    assert {phase for _, phase in held.handled[1:]} == {Phase.DRAINING}


@pytest.mark.parametrize("ws", IMPLS)
async def test_what_a_v2_client_sent_before_the_shutdown_reaches_the_handler(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with held_app(ws, monkeypatch) as (manager, held, server):
        url = f"ws://127.0.0.1:{server.port}/ws/alice"
        async with websockets.connect(url, subprotocols=[Subprotocol("stabilizer.v2")]) as client:
            await client.send(json.dumps({"type": "connect"}))
            async with asyncio.timeout(BOUND):
                assert json.loads(await client.recv())["type"] == "session"
            for text in ["hold", *LINES]:
                await client.send(json.dumps({"type": "message", "data": text}))
            await shut_down_while_held(manager, held)
            assert await closed_by_server(client) == CloseCode.SERVICE_RESTART
    assert [message for message, _ in held.handled] == ["hold", *LINES]
    assert {phase for _, phase in held.handled[1:]} == {Phase.DRAINING}
