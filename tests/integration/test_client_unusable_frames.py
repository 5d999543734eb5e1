"""What the Python client does with a server's frame it cannot use: one whose values it
cannot act on is dropped and the connection goes on; one over its max_message_size ends
it, saying why.

A `refreshed` frame whose ``expires_at`` was an integer too large for a float (10**400:
valid JSON) raised OverflowError out of the read loop, and the client ended for good
("client failed unexpectedly"). A message over max_message_size made the client close its
socket with 1009, which it then reported as 1006 "connection lost without a close frame"
(the server did not echo the close) and retried: with history every resume replayed the
same message, in an endless loop, and the application never learned why."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import (
    ClientClosedError,
    ConnectionState,
    RetryPolicy,
    StateChange,
    connect,
)
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
LIMIT = 65536  # the client's max_message_size
QUIET = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
HISTORY = {"history_size": 50, "history_ttl": 60.0, "session_ttl": 60.0}
Script = Callable[[ServerConnection], Awaitable[None]]


def session_frame(*, history: bool = False) -> str:
    return json.dumps({"type": "session", "protocol": 2, "client_id": "d1", "device": "d1",
                       "conn_id": "c1", "node_id": "scripted", "resumed": False,
                       "token": "t1", "history": history})


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """A v2 server that runs `script` for each connection; yields its ws:// URL."""
    async with serve(script, "127.0.0.1", 0,
                     subprotocols=[Subprotocol("stabilizer.v2")]) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


async def test_a_refreshed_frame_with_a_huge_expiry_leaves_the_client_open() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()  # the connect frame
        await ws.send(session_frame())
        await ws.send('{"type":"refreshed","expires_at":1' + "0" * 400 + "}")
        await ws.send('{"type":"message","data":"after"}')
        await ws.wait_closed()

    async with scripted(script) as url, connect(url, protocol=2) as client:
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "after"
        assert client.state is ConnectionState.OPEN
        assert client.expires_at is None


@pytest.mark.parametrize("history", [True, False], ids=["history", "no history"])
@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_message_over_max_message_size_ends_the_client_saying_why(
        monkeypatch: pytest.MonkeyPatch, protocol: int, history: bool) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **(HISTORY if history
                                                                     else {})))
    states: list[StateChange] = []
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=protocol,
                max_message_size=LIMIT, on_state=states.append,
                retry=RetryPolicy(base=0.01, cap=0.05)) as client,
    ):
        await manager.broadcast("before")
        await manager.broadcast("x" * 2 * LIMIT)
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "before"  # what came first is still returned
            with pytest.raises(ClientClosedError) as ended:
                await client.recv()
    assert ended.value.code == 1009
    assert f"over max_message_size ({LIMIT} bytes)" in str(ended.value)
    assert [change.state for change in states] == [
        ConnectionState.CONNECTING, ConnectionState.OPEN, ConnectionState.CLOSED]
    assert states[-1].close_code == 1009  # (no reconnect: every resume would replay it)
    assert states[-1].error is not None
    assert states[-1].close_reason == ended.value.reason
