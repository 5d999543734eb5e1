"""A v2 client whose (re)connect lands on a node that drains reads the node's 1012 and its
retry advice, and reconnects elsewhere. Before, the node refused such a socket before the
handshake chose a subprotocol and accepted it without stabilizer.v2: the Python client took
that for a server that does not speak v2 and gave up for good (HandshakeRejectedError), so a
rolling deploy lost every v2 client that reconnected inside a replica's drain window."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.memory import MemoryBackend, MemoryHub
from stabilizer.client import (
    ConnectionState,
    HandshakeRejectedError,
    RetryPolicy,
    StateChange,
    connect,
)
from tests.support.apps import session_app
from tests.support.clients import connect as connect_raw
from tests.support.inproc_uvicorn import served

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
RESTARTING = {"shutdown_mode": "restart", "retry_jitter": 0.05, **QUIET}
FAST = RetryPolicy(base=0.01, cap=0.05)
BOUND = 10.0


def node(hub: MemoryHub, node_id: str) -> WebSocketConnectionManager:
    return WebSocketConnectionManager(WebSocketConfig(node_id=node_id, **RESTARTING),
                                      backend=MemoryBackend(hub))


def refusals(states: list[StateChange]) -> list[int | None]:
    """The close codes of the sockets that ended before the client opened."""
    return [change.close_code for change in states
            if change.state is ConnectionState.CONNECTING and change.close_code is not None]


@pytest.mark.parametrize("offered", [True, False], ids=["v2", "plain"])
async def test_a_draining_node_refuses_with_the_subprotocol_the_client_offered(
        offered: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**RESTARTING))
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server:
        await manager.graceful_shutdown(timeout=BOUND, restart=True)
        ws = await connect_raw(f"ws://127.0.0.1:{server.port}/ws", open_timeout=BOUND,
                               subprotocols=[Subprotocol("stabilizer.v2")] if offered else None)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(BOUND):
                await ws.recv()
    assert ws.subprotocol == ("stabilizer.v2" if offered else None)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CloseCode.SERVICE_RESTART
    assert set(json.loads(closed.value.rcvd.reason)) == {"retry_ms"}


async def test_a_v2_client_refused_by_a_draining_node_reconnects_to_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hub = MemoryHub()
    draining, staying = node(hub, "draining"), node(hub, "staying")
    states: list[StateChange] = []
    async with (
        served(session_app(draining), "websockets-sansio", monkeypatch) as first,
        served(session_app(staying), "websockets-sansio", monkeypatch) as second,
    ):
        await draining.graceful_shutdown(timeout=BOUND, restart=True)
        await opens_on_the_second(first.port, second.port, states)
    assert refusals(states) == [CloseCode.SERVICE_RESTART]


async def opens_on_the_second(first: int, second: int, states: list[StateChange]) -> None:
    """A v2 client given the nodes on ports `first` and `second`, in that order, opens on
    the second ("staying"); its state changes go to `states`."""
    client = connect([f"ws://127.0.0.1:{first}/ws", f"ws://127.0.0.1:{second}/ws"],
                     protocol=2, retry=FAST, on_state=states.append)
    try:
        async with asyncio.timeout(BOUND):
            await client.start()
        assert client.node_id == "staying"
    finally:
        await client.aclose()


def older_node() -> FastAPI:
    """A node as stabilizer drained before: it accepts a refused socket without a
    subprotocol, then closes it with 1012 and retry advice."""
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(CloseCode.SERVICE_RESTART, json.dumps({"retry_ms": 10}))

    return app


async def test_a_v2_client_follows_the_advice_of_an_older_node_that_refuses_without_v2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = node(MemoryHub(), "staying")
    states: list[StateChange] = []
    async with (
        served(older_node(), "websockets-sansio", monkeypatch) as old,
        served(session_app(manager), "websockets-sansio", monkeypatch) as new,
    ):
        await opens_on_the_second(old.port, new.port, states)
    assert refusals(states) == [CloseCode.SERVICE_RESTART]


async def test_a_v2_client_still_gives_up_on_a_close_without_advice_and_without_v2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a close that carries retry advice is followed; any other still means the
    endpoint does not speak v2."""
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(CloseCode.POLICY_VIOLATION, "no")

    async with served(app, "websockets-sansio", monkeypatch) as server:
        client = connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, retry=FAST)
        with pytest.raises(HandshakeRejectedError, match="does not speak stabilizer protocol"):
            async with asyncio.timeout(BOUND):
                await client.start()
