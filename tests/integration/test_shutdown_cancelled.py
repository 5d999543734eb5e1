"""A graceful_shutdown() whose caller is cancelled (asyncio.wait_for around it, a lifespan
cancelled by its server) still stops the node: the stop runs to its end on its own, a
later call waits for that same stop and returns its report, and start() works once it
has ended. Before, the cancellation left the node draining for good: its loops ran on,
its presence stayed alive in Redis with its connections open, start() was refused
forever and every later graceful_shutdown() returned an empty report at once."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.node.context import Phase
from tests.support.fakes import FakeSocket, SlowToClose
from tests.support.redis_clients import ClientWatch
from tests.support.redis_server import RedisServer

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
BOUND = 5.0


async def cancel_a_shutdown_midway(manager: WebSocketConnectionManager,
                                   sock: SlowToClose) -> None:
    """Start a graceful_shutdown, and cancel its caller while the socket is closing."""
    caller = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))
    async with asyncio.timeout(BOUND):
        await sock.closing.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_a_cancelled_shutdown_stops_the_node_all_the_same() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(close_timeout=BOUND, **QUIET))
    sock = SlowToClose("held")
    await manager.connect("alice", sock)
    await cancel_a_shutdown_midway(manager, sock)
    assert manager.phase is Phase.DRAINING  # (the socket still holds it)
    second = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))
    await asyncio.sleep(0)  # (the second call has run up to its wait)
    assert not second.done()  # it waits for the stop under way
    sock.release.set()
    async with asyncio.timeout(BOUND):
        report = await second
    assert (report.closed_count, report.failed_count) == (1, 0)  # the stop's own report
    assert report.close_code == 1001
    assert manager.phase is Phase.STOPPED
    assert manager._node.ctx.tasks.running() == []  # no loop runs on
    await manager.start()  # and it starts again
    fresh = FakeSocket("bob")
    await manager.connect("bob", fresh)
    assert manager.get_active_connections() == ["bob"]
    await manager.graceful_shutdown(timeout=2.0)


@pytest.mark.redis
async def test_a_cancelled_shutdown_leaves_nothing_of_the_node_in_redis(
        private_redis: RedisServer, namespace: str) -> None:
    config = WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                             close_timeout=BOUND, **QUIET)
    async with ClientWatch(private_redis.url) as watch:
        manager = WebSocketConnectionManager(config)
        await manager.start()
        sock = SlowToClose("held")
        await manager.connect("alice", sock)
        await cancel_a_shutdown_midway(manager, sock)
        sock.release.set()
        async with asyncio.timeout(BOUND):
            await manager.graceful_shutdown(timeout=BOUND)
        assert manager.phase is Phase.STOPPED
        async with WebSocketConnectionManager(config) as other:  # a node that looks
            assert manager.node_id not in await other.backend.liveness.nodes()
            assert [seen async for seen in other.get_cluster_connections()] == []
        assert await watch.settled_open() == set()  # neither left a connection open
