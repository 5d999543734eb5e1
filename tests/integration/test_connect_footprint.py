"""What a connect keeps alive while its registration waits for its Redis round trip.

In a reconnect storm thousands of connects wait at once, each for its batch's round trip,
and whatever they keep alive meanwhile is promoted to the cyclic collector's oldest
generation, which every full collection walks again (BENCHMARKS.md, "Reconnect storm").
These tests pin the shape of that wait on a real Redis: which of stabilizer's frames are
suspended in it, and that the connection behaves once the round trip returns.
"""

from __future__ import annotations

import asyncio
import gc
from types import MethodType
from typing import Any

import pytest

from stabilizer import WebSocketConfig
from stabilizer.backends.redis import RedisBackend
from stabilizer.session.session import Session
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket

pytestmark = pytest.mark.redis

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0, "node_ttl": 3600.0,
         "memory_check_interval": 3600.0}
BOUND = 5.0


def awaiting(coro: Any) -> list[str]:
    """The qualified names of the coroutines `coro` awaits through, outermost first."""
    names = []
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return names


@pytest.mark.parametrize("history", [0, 100])
async def test_a_connect_waiting_for_its_registration_suspends_in_three_frames_of_ours(
        make_manager: ManagerFactory, redis_url: str, namespace: str, history: int) -> None:
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                           history_size=history, **QUIET))
    await manager.start()
    backend = manager.backend
    assert isinstance(backend, RedisBackend)
    batcher = backend.presence._registers
    real = batcher._pipelined
    in_flight, release = asyncio.Event(), asyncio.Event()

    async def held(calls: list[Any]) -> list[Any]:
        in_flight.set()
        await release.wait()
        return await real(calls)

    batcher._pipelined = held  # type: ignore[method-assign]
    ws = FakeWebSocket("alice")
    session = manager.open_session(ws, "alice")

    async def enter() -> Session:
        return await session.__aenter__()

    coro = enter()
    task = asyncio.ensure_future(coro)
    try:
        async with asyncio.timeout(BOUND):
            await in_flight.wait()
        assert awaiting(coro) == ["test_a_connect_waiting_for_its_registration_suspends_in_"
                                  "three_frames_of_ours.<locals>.enter", "Session.__aenter__",
                                  "Admission.admit", "RedisPresence.register"]
        release.set()
        async with asyncio.timeout(BOUND):
            entered = await task
        assert entered.conn is not None
        assert entered.refused is None
        assert manager.is_connected("alice")
        assert await manager.get_cluster_connection_count() == 1
    finally:
        release.set()
        await session.__aexit__(None, None, None)
        task.cancel()


async def test_an_idle_connection_keeps_no_bound_method_of_its_socket(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    """A bound method per connection is one more object for every full collection to walk;
    frames the prepared write cannot take go through the socket's send all the same."""
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET))
    ws = FakeWebSocket("alice")
    async with manager.open_session(ws, "alice") as session:
        conn = session.conn
        assert conn is not None
        bound = [r for r in gc.get_referents(conn)
                 if isinstance(r, MethodType) and r.__self__ is ws]
        assert bound == []
        assert await manager.send_to_client("alice", "hello")
        await ws.expect("hello")
