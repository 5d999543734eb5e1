"""A test suite written for fastapi-websocket-stabilizer 1.1.0 keeps passing after the import
changes: sockets are AsyncMocks, asserted on through send_text / send_json / close, as that
library's own users test their endpoints."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from unittest.mock import ANY, AsyncMock

import pytest
from starlette.websockets import WebSocket

from stabilizer import (
    BroadcastFailedError,
    ConfigError,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.conftest import ManagerFactory

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


def mock_socket(*, spec: bool = False) -> Any:
    """A socket as seed-style tests make it: every method an AsyncMock."""
    return AsyncMock(spec=WebSocket) if spec else AsyncMock()


@pytest.mark.parametrize("spec", [False, True])
async def test_messages_go_through_send_text_and_send_json(
    make_manager: ManagerFactory, spec: bool,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    socket = mock_socket(spec=spec)
    await manager.connect("alice", socket)
    assert await manager.send_to_client("alice", "Direct message") is True
    socket.send_text.assert_awaited_with("Direct message")
    assert await manager.send_to_client("alice", {"type": "note", "n": 1}) is True
    socket.send_json.assert_awaited_with({"type": "note", "n": 1})
    result = await manager.broadcast("System message")
    assert (result.total, result.succeeded, result.failed) == (1, 1, 0)
    socket.send_text.assert_awaited_with("System message")


async def test_broadcast_excludes_the_sender(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sender, other = mock_socket(), mock_socket()
    await manager.connect("sender", sender)
    await manager.connect("other", other)
    await manager.broadcast('{"message": "chat"}', exclude_client="sender")
    other.send_text.assert_awaited_once_with('{"message": "chat"}')
    sender.send_text.assert_not_awaited()


async def test_a_send_that_raises_returns_false_and_removes_the_client(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    socket = mock_socket()
    socket.send_text.side_effect = RuntimeError("connection reset")
    await manager.connect("alice", socket)
    assert await manager.send_to_client("alice", "hello") is False
    assert not manager.is_connected("alice")
    assert manager.get_connection_count() == 0


async def test_a_broadcast_that_reaches_nobody_raises(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    for name in ("a", "b"):
        socket = mock_socket()
        socket.send_text.side_effect = RuntimeError("gone")
        await manager.connect(name, socket)
    with pytest.raises(BroadcastFailedError) as info:
        await manager.broadcast("anyone?")
    assert info.value.result is not None
    assert info.value.result.failed == 2


async def test_disconnect_closes_the_socket(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    socket = mock_socket()
    await manager.connect("alice", socket)
    await manager.disconnect("alice")
    socket.close.assert_awaited_once_with(code=1000, reason=ANY)
    assert manager.get_active_connections() == []


async def test_pings_go_through_send_json(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(heartbeat_interval=0.05, heartbeat_timeout=30.0))
    pinged = asyncio.Event()
    socket = mock_socket()
    socket.send_json.side_effect = lambda body: pinged.set()
    await manager.connect("alice", socket)
    async with asyncio.timeout(5):
        await pinged.wait()
    socket.send_json.assert_awaited_with({"type": "ping", "timestamp": ANY})
    await manager.handle_pong("alice")
    assert manager.is_connected("alice")


async def test_a_close_that_raises_counts_as_failed_at_shutdown() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    fine, broken = mock_socket(), mock_socket()
    broken.close.side_effect = RuntimeError("already closed")
    await manager.connect("fine", fine)
    await manager.connect("broken", broken)
    report = await manager.graceful_shutdown(timeout=2.0)
    assert (report.closed_count, report.failed_count) == (1, 1)
    fine.close.assert_awaited_once_with(code=1001, reason=ANY)


@pytest.mark.parametrize(("settings", "start"), [
    ({"num_shards": 0}, "num_shards must be positive"),
    ({"heartbeat_interval": 0}, "heartbeat_interval must be positive"),
    ({"heartbeat_timeout": -1}, "heartbeat_timeout must be positive"),
    ({"max_connections": 0}, "max_connections must be positive or None"),
    ({"max_message_size": 0}, "max_message_size must be positive"),
    ({"max_concurrent_cleanup": 0}, "max_concurrent_cleanup must be positive"),
    ({"max_concurrent_broadcast": 0}, "max_concurrent_broadcast must be positive"),
    ({"memory_check_interval": 0}, "memory_check_interval must be positive"),
    ({"max_memory_per_connection": 0}, "max_memory_per_connection must be positive"),
    ({"max_total_memory": 0}, "max_total_memory must be positive"),
    ({"log_level": "LOUD"}, "log_level must be a valid logging level"),
    ({"memory_eviction_policy": "random"}, "memory_eviction_policy must be one of: "),
])
def test_config_errors_start_with_the_seeds_wording(settings: dict[str, Any],
                                                     start: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(start)) as info:
        WebSocketConfig(**settings)
    assert isinstance(info.value, ConfigError)
