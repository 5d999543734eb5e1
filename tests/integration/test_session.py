"""Session (the serve helper's engine) with fake websockets: admission edge cases."""

from __future__ import annotations

import json

import pytest

from stabilizer import WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket
from tests.support.redis_server import free_port

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def test_a_session_works_when_redis_was_down_from_the_start(
    make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """No token key can be fetched: the client is served, without a reconnect token."""
    dead = f"redis://127.0.0.1:{free_port()}"
    manager = make_manager(WebSocketConfig(redis_url=dead, op_timeout=0.2, **QUIET))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice") as session:
        assert session.refused is None
        welcome = json.loads(await ws.next())
        assert welcome["type"] == "session"
        assert welcome["token"] is None
        ws.client_says("echo")
        assert await session.receive() == "echo"
        ws.client_leaves()
        assert await session.receive() is None
    assert manager.get_connection_count() == 0
    assert "no reconnect token" in caplog.text


async def test_an_error_in_the_handler_closes_with_1011_and_releases(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ws = FakeWebSocket()
    with pytest.raises(RuntimeError, match="boom"):
        async with manager.open_session(ws, "alice"):
            raise RuntimeError("boom")
    assert (await ws.wait_closed())[0] == 1011
    assert manager.get_connection_count() == 0


async def test_pongs_and_client_pings_never_reach_the_application(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice", welcome=False) as session:
        ws.client_says("pong")
        ws.client_says('{"type":"pong"}')
        ws.client_says('{"type":"ping"}')
        ws.client_says("hello")
        assert await session.receive() == "hello"
        assert json.loads(await ws.next()) == {"type": "pong"}
        assert manager.stats.pongs == 2
