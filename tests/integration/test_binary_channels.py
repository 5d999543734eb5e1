"""A binary message sent to a group reaches a v2 member's subscription (docs/protocol.md 6.6)
as bytes, with history or without; a v1 member and a direct binary message still get a
plain binary frame. Real sockets: uvicorn in the test's loop, the Python client.

Before, without history, a group's binary message went to v2 connections as a plain binary
frame naming no channel, so the client handed it to recv() instead of the callback of the
channel's subscription."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import connect
from tests.integration.test_hostile_text import subscribed
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
QUIET: dict[str, Any] = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
HISTORY: dict[str, Any] = {"history_size": 50, "history_ttl": 60.0, "session_ttl": 60.0}


async def allow(request: SubscribeRequest) -> bool:
    return True


@pytest.mark.parametrize("settings", [{}, HISTORY], ids=["live", "history"])
async def test_a_groups_binary_message_reaches_the_subscription_of_a_v2_member(
    settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **settings))
    manager.on_subscribe(allow)
    room: asyncio.Queue[str | bytes] = asyncio.Queue()
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2) as client,
    ):
        await client.subscribe("room", room.put_nowait)
        await manager.send_to_group("room", b"\x00\x01\xff")
        await manager.send_to_group("room", "then text")
        await manager.send_to_client(client.client_id, b"\x07")  # direct: not the channel's
        async with asyncio.timeout(BOUND):
            assert [await room.get(), await room.get()] == [b"\x00\x01\xff", "then text"]
            assert await client.recv() == b"\x07"
        assert room.empty()


async def test_the_frames_v1_and_v2_members_get_for_a_groups_binary_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    manager.on_subscribe(allow)
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with raw_connect(url) as plain, await subscribed(url, "tab-1", "room") as v2:
            async with asyncio.timeout(BOUND):
                plain_id = json.loads(await plain.recv())["client_id"]
            await manager.join_group(plain_id, "room")
            assert (await manager.send_to_group("room", b"\x00\x01")).succeeded == 2
            await manager.send_to_client(plain_id, b"\x02")
            await manager.send_to_client("tab-1", b"\x03")
            async with asyncio.timeout(BOUND):
                assert await plain.recv() == b"\x00\x01"  # v1: as it was sent
                assert await plain.recv() == b"\x02"
                assert json.loads(await v2.recv()) == {
                    "type": "message", "channel": "room", "data_b64": "AAE="}
                assert await v2.recv() == b"\x03"  # direct: as it was sent
