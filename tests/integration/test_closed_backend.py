"""A node's Redis backend, once its shutdown closed it, reaches Redis no more: a start that
the shutdown overtook ends without calling it, and a call made after the shutdown (a
broadcast from a task that outlived it) is refused instead of reconnecting. Before, both
made redis-py open a connection on demand that nothing would ever close."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.node.context import Phase
from tests.support.fakes import FakeSocket
from tests.support.redis_clients import ClientWatch
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
BOUND = 10.0


@pytest.mark.parametrize("history_size", [0, 100])
async def test_a_start_that_a_shutdown_overtakes_leaves_no_connection_open(
        private_redis: RedisServer, namespace: str, history_size: int) -> None:
    config = WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                             history_size=history_size, **QUIET)
    async with ClientWatch(private_redis.url) as watch:
        manager = WebSocketConnectionManager(config)
        starting = asyncio.create_task(manager.start())
        await asyncio.sleep(0)  # (the start is under way: its backend is opening)
        async with asyncio.timeout(BOUND):
            await manager.graceful_shutdown(timeout=2.0)
            await starting
        assert manager.phase is Phase.STOPPED
        assert manager._node.ctx.tasks.running() == []
        assert await watch.settled_open() == set()


async def test_a_call_after_the_shutdown_opens_no_connection(
        private_redis: RedisServer, namespace: str) -> None:
    config = WebSocketConfig(redis_url=private_redis.url, namespace=namespace, **QUIET)
    async with ClientWatch(private_redis.url) as watch:
        manager = WebSocketConnectionManager(config)
        await manager.connect("alice", FakeSocket("alice"))
        await manager.graceful_shutdown(timeout=2.0)
        result = await manager.broadcast("late")
        # as on any backend that cannot be reached: no local recipient, and no other node
        assert (result.total, result.remote_nodes) == (0, 0)
        assert result.remote_error is not None
        assert "closed" in result.remote_error
        assert await manager.send_to_client("alice", "late") is False
        assert await watch.settled_open() == set()
