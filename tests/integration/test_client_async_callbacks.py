"""The Python client refuses an ``async def`` callback where it is given (TypeError naming
it): it calls callbacks from its reader, which never waits for the application, so the
coroutine would never run. ``get_token``, which the client awaits, may still be async.

Before, it took them: each call made a coroutine it dropped (a RuntimeWarning), and a
message handed to such an ``on_message`` counted as handled (its position recorded, its
acknowledgement sent) although the handler never ran."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from stabilizer.client import connect
from tests.integration.test_client_unusable_frames import BOUND, scripted, session_frame


async def ignore(*args: Any) -> None:
    """An async callback: what the client refuses."""


async def serve_channels(ws: ServerConnection) -> None:
    """A v2 server that allows every subscribe (with the channel's presence, empty, when
    asked), answers the rpc "first" with the type of the first request it got, and sends a
    message of channel "room" after each subscribe of it."""
    await ws.recv()  # the connect frame
    await ws.send(session_frame())
    first: str | None = None
    async for raw in ws:
        frame = json.loads(raw)
        first = first or frame["type"]
        if frame["type"] == "rpc":
            await ws.send(json.dumps({"type": "reply", "id": frame["id"], "result": first}))
        elif frame["type"] == "subscribe":
            channel = frame["channel"]
            await ws.send(json.dumps({"type": "reply", "id": frame["id"],
                                      "result": {"channel": channel}}))
            if frame.get("presence"):
                await ws.send(json.dumps({"type": "presence_state", "channel": channel,
                                          "presence": {}}))
            await ws.send(json.dumps({"type": "message", "channel": channel, "data": "hi"}))


@pytest.mark.parametrize("name", ["on_state", "on_control", "on_resume"])
def test_connect_refuses_an_async_callback(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        connect("ws://127.0.0.1:1/ws", protocol=2, **{name: ignore})


@pytest.mark.parametrize("name", ["on_message", "on_presence", "on_unsubscribed"])
async def test_subscribe_refuses_an_async_callback_and_sends_nothing(name: str) -> None:
    async def get_token() -> str:  # (awaited by the client: async is fine here)
        return "jwt"

    options: dict[str, Any] = {name: ignore}
    async with (
        scripted(serve_channels) as url,
        connect(url, protocol=2, get_token=get_token) as client,
    ):
        with pytest.raises(TypeError, match=name):
            await client.subscribe("room", presence=True, **options)
        async with asyncio.timeout(BOUND):
            assert await client.rpc("first") == "rpc"  # no subscribe went out
        with pytest.raises(KeyError):
            client.presence("room")


async def test_a_presence_refuses_an_async_on_change() -> None:
    async with scripted(serve_channels) as url, connect(url, protocol=2) as client:
        await client.subscribe("room", lambda message: None, presence=True)
        with pytest.raises(TypeError, match="on_change"):
            client.presence("room").on_change(ignore)


async def test_a_callback_that_returns_a_coroutine_is_logged_not_left_unawaited(
        caplog: pytest.LogCaptureFixture) -> None:
    """A plain function that returns a coroutine (a lambda around an async handler) gets
    past the check: the client closes the coroutine and says why in the log."""
    handled: list[str | bytes] = []

    async def handle(message: str | bytes) -> None:
        handled.append(message)  # (never runs)

    async with scripted(serve_channels) as url, connect(url, protocol=2) as client:
        with caplog.at_level(logging.ERROR, logger="stabilizer.client"):
            await client.subscribe("room", lambda message: handle(message))
            async with asyncio.timeout(BOUND):  # (its reply comes after the message)
                assert await client.rpc("first") == "subscribe"
    assert "on_message of channel 'room' returned a coroutine" in caplog.text
    assert handled == []
