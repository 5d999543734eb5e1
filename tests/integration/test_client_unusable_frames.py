"""What the Python client does with a server's frame it cannot use: one whose values it
cannot act on is dropped and the connection goes on.

A `refreshed` frame whose ``expires_at`` was an integer too large for a float (10**400:
valid JSON) raised OverflowError out of the read loop, and the client ended for good
("client failed unexpectedly")."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from stabilizer.client import ConnectionState, connect

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
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
