"""A v2 client refuses, with ValueError, a request or message whose frame is over the
``max_message_size`` the server's session frame stated, and sends nothing: the
connection goes on.

Before, it sent the frame; the server closed with 1009, which is final, and the whole
client ended for good (a call reported ``disconnected``: "the call may have run")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection

from stabilizer import RPCCall, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import ClientConnection, ConnectionState, RetryPolicy, connect
from tests.integration.test_client_unusable_frames import BOUND, scripted
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

FAST = RetryPolicy(base=0.01, cap=0.05)
LIMIT = 4096  # the server's max_message_size
BIG = "é" * (LIMIT // 2)  # 2 bytes each in UTF-8: as many characters as the limit has room
Request = Callable[[ClientConnection], Awaitable[object]]

OVERSIZED: dict[str, Request] = {
    "rpc": lambda client: client.rpc("size", BIG),
    "publish": lambda client: client.publish("room", BIG),
    "subscribe": lambda client: client.subscribe("room", params={"note": BIG}),
    "send text": lambda client: client.send(BIG),
    "send binary": lambda client: client.send(b"\x00" * (LIMIT + 1)),
}


@pytest.mark.parametrize("request_", OVERSIZED.values(), ids=OVERSIZED.keys())
async def test_a_frame_over_the_servers_limit_is_refused_and_the_client_goes_on(
        monkeypatch: pytest.MonkeyPatch, request_: Request) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(
        heartbeat_interval=60, heartbeat_timeout=120, max_message_size=LIMIT))
    manager.on_subscribe(lambda request: True)

    @manager.rpc("size")
    async def size(call: RPCCall) -> int:
        return len(str(call.params))

    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2) as client,
    ):
        assert client.session is not None
        assert client.session.max_message_size == LIMIT
        first = client.node_id, client.session
        with pytest.raises(ValueError, match=f"max_message_size.*{LIMIT}"):
            await request_(client)
        async with asyncio.timeout(BOUND):
            assert await client.rpc("size", "small") == 5  # the same connection, open
        assert client.state is ConnectionState.OPEN
        assert (client.node_id, client.session) == first  # (never reconnected)


async def test_a_subscription_too_large_for_the_server_reconnected_to_ends() -> None:
    """A subscribe made again after a reconnect, whose params the new server's limit has
    no room for, counts as refused (``bad_request``), and the client goes on."""
    sessions = iter([2**20, 256])  # the first server's max_message_size, the next one's

    async def script(ws: ServerConnection) -> None:
        await ws.recv()  # the connect frame
        await ws.send(json.dumps({
            "type": "session", "protocol": 2, "client_id": "d1", "device": "d1",
            "conn_id": "c1", "node_id": "scripted", "resumed": False, "token": "t1",
            "history": False, "max_message_size": next(sessions)}))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "subscribe":
                await ws.send(json.dumps({"type": "reply", "id": frame["id"],
                                          "result": {"channel": frame["channel"]}}))
                await ws.close(1012, '{"retry_ms": 10}')  # (a restart: come back at once)
                return
            if frame["type"] == "rpc":
                await ws.send(json.dumps({"type": "reply", "id": frame["id"],
                                          "result": "still here"}))

    told: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with scripted(script) as url, connect(url, protocol=2, retry=FAST) as client:
        await client.subscribe("room", params={"note": "n" * 300},
                               on_unsubscribed=told.set_result)
        async with asyncio.timeout(BOUND):
            assert await told == "bad_request"
            assert await client.rpc("ping") == "still here"
