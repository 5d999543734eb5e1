"""The longest user id and the longest device still make a client id the server accepts:
max_client_id_length leaves room for `<user_id>/<device>` (256 + 1 + 64 characters), so an
identity the authenticator accepted is never refused for its client id's length."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from stabilizer import Credentials, Identity, WebSocketConfig, WebSocketConnectionManager
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
LONGEST_USER = "u" * 256
LONGEST_DEVICE = "d" * 64


def named_by_token(credentials: Credentials) -> Identity:
    """The token is the user id."""
    assert credentials.token is not None
    return Identity(credentials.token)


async def next_frame(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(5):  # a bound, not a wait
        while (frame := json.loads(await ws.recv()))["type"] == "ping":
            pass
        return frame  # type: ignore[no-any-return]


@pytest.mark.parametrize("user", ["u" * 191, "u" * 192, "u" * 255, LONGEST_USER])
async def test_a_user_id_of_any_accepted_length_connects_from_the_longest_device(
    monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET),
                                         authenticator=named_by_token)
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server, \
            websockets.connect(f"ws://127.0.0.1:{server.port}/ws",
                               subprotocols=["stabilizer.v2"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "token": user, "device": LONGEST_DEVICE}))
        welcome = await next_frame(ws)
        assert welcome["type"] == "session"
        assert welcome["client_id"] == f"{user}/{LONGEST_DEVICE}"
        assert welcome["user_id"] == user
        assert await manager.send_to_user(user, {"text": "hi"}) == 1
        assert json.loads((await next_frame(ws))["data"]) == {"text": "hi"}
