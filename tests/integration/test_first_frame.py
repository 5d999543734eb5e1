"""The first frame a client receives is its `session` frame (README, docs/protocol.md), even
when an `on_connect` hook sends to it (a "X joined" broadcast is the common case): the
connection was in the pool, and the hooks ran, before the frame was offered, so the hook's
broadcast reached the new client first."""

from __future__ import annotations

import json

import pytest

from stabilizer import ConnectionEvent, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


@pytest.mark.parametrize("history", [False, True])
async def test_the_session_frame_comes_before_what_a_connect_hook_sends(
        make_manager: ManagerFactory, history: bool) -> None:
    manager = make_manager(WebSocketConfig(history_size=100 if history else 0, **QUIET))

    @manager.on_connect
    async def announce(event: ConnectionEvent) -> None:
        await manager.broadcast({"type": "joined", "who": event.client_id})
        await manager.send_to_client(event.client_id, {"type": "hello"})

    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice") as session:
        assert session.refused is None
        frames = [json.loads(await ws.next()) for _ in range(3)]
        ws.client_leaves()
        assert await session.receive() is None
    assert frames[0]["type"] == "session"
    # (with history a message frame carries the application's text in "data")
    sent = [json.loads(frame["data"]) if history else frame for frame in frames[1:]]
    assert [message["type"] for message in sent] == ["joined", "hello"]
