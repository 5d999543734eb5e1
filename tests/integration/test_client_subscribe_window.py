"""A channel's messages go to its subscription's ``on_message`` from the moment the
server's reply to the subscribe is read, and until the reply to the unsubscribe is read.

Before, the Python client recorded a subscription only once the task that called
subscribe() resumed; its reader went on meanwhile, and the channel's first messages, read
right behind the reply, went to recv() with nothing to tell them from direct messages.
Its unsubscribe() dropped the callback before the request was even sent, so a message the
server had sent before the leave reached recv() the same way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import connect
from tests.integration.test_client_unusable_frames import BOUND, scripted, session_frame
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


def reply(frame: dict[str, Any]) -> str:
    return json.dumps({"type": "reply", "id": frame["id"],
                       "result": {"channel": frame["channel"]}})


def message(data: str, channel: str | None = None) -> str:
    body = {"type": "message", "data": data}
    return json.dumps(body if channel is None else {**body, "channel": channel})


async def test_messages_right_behind_the_subscribe_reply_go_to_on_message() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()  # the connect frame
        await ws.send(session_frame())
        frame = json.loads(await ws.recv())
        assert frame["type"] == "subscribe"
        # a busy channel: its traffic follows the reply at once, then a direct message
        await ws.send(reply(frame))
        for n in range(3):
            await ws.send(message(f"room-{n}", "room"))
        await ws.send(message("direct"))
        await ws.wait_closed()

    got: list[str | bytes] = []
    async with scripted(script) as url, connect(url, protocol=2) as client:
        await client.subscribe("room", got.append)
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "direct"  # (not a message of the channel)
    assert got == ["room-0", "room-1", "room-2"]


async def test_messages_sent_before_the_unsubscribe_reply_go_to_on_message() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(session_frame())
        await ws.send(reply(json.loads(await ws.recv())))  # the subscribe
        frame = json.loads(await ws.recv())
        assert frame["type"] == "unsubscribe"
        await ws.send(message("before the leave", "room"))  # on its way already
        await ws.send(reply(frame))
        # after the reply: a membership of the application's own (join_group), no more
        # the subscription's
        await ws.send(message("after the leave", "room"))
        await ws.wait_closed()

    got: list[str | bytes] = []
    async with scripted(script) as url, connect(url, protocol=2) as client:
        await client.subscribe("room", got.append)
        await client.unsubscribe("room")
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "after the leave"
    assert got == ["before the leave"]


async def test_a_busy_channel_never_reaches_recv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with a real server: the channel carries messages all along."""
    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=60,
                                                         heartbeat_timeout=120))
    manager.on_subscribe(lambda request: True)
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    stop = asyncio.Event()

    async def pump() -> None:
        n = 0
        while not stop.is_set():
            await manager.send_to_group("busy", f"tick-{n}")
            n += 1
            await asyncio.sleep(0.001)

    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2) as client,
    ):
        pumping = asyncio.create_task(pump())
        try:
            for _ in range(5):
                await client.subscribe("busy", got.put_nowait)
                async with asyncio.timeout(BOUND):
                    await got.get()  # the channel carries messages
                await client.unsubscribe("busy")
        finally:
            stop.set()
            await pumping
        client_id = client.client_id
        assert client_id is not None
        await manager.send_to_client(client_id, "direct")
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "direct"
