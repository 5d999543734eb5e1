"""GET /stats is open unless the router is given `dependencies` (the documented default):
it must never hold the event loop for a walk over every connection, nor make a Redis round
trip per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.connection.connection import Connection
from stabilizer.fastapi import router
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0}
CONNECTIONS = 600
SLICE = 100  # max_concurrent_broadcast: the walk yields after each slice


async def loop_passes_seen_by_the_walk(manager: WebSocketConnectionManager, path: str,
                                       monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The loop passes (counted by a task that yields once per pass) during which a request
    for `path` estimated a connection's memory."""
    app = FastAPI()
    app.include_router(router(manager))
    passes = 0
    seen: set[int] = set()
    estimate = Connection.memory_estimate

    def spied(self: Connection) -> int:
        seen.add(passes)
        return estimate(self)

    async def count_passes() -> None:
        nonlocal passes
        while True:
            passes += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(Connection, "memory_estimate", spied)
    counter = asyncio.ensure_future(count_passes())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            response = await http.get(path)
    finally:
        counter.cancel()
        monkeypatch.undo()
    assert response.status_code == 200
    return seen


@pytest.fixture
async def crowded() -> AsyncIterator[WebSocketConnectionManager]:
    manager = WebSocketConnectionManager(WebSocketConfig(
        max_concurrent_broadcast=SLICE, enable_metrics=True, **QUIET))
    await manager.start()
    for index in range(CONNECTIONS):
        await manager.connect(f"c{index}", FakeSocket(), metadata={"tags": ["t"] * 10})
    yield manager
    await manager.graceful_shutdown(timeout=5.0)


async def test_stats_walks_the_connections_a_slice_per_loop_pass(
        crowded: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = await loop_passes_seen_by_the_walk(crowded, "/stats", monkeypatch)
    assert len(seen) >= CONNECTIONS // SLICE


async def test_stats_reports_what_the_manager_reports(
        crowded: WebSocketConnectionManager) -> None:
    app = FastAPI()
    app.include_router(router(crowded))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as http:
        body = (await http.get("/stats")).json()
    assert body["memory"] == crowded.get_memory_usage()
    assert body["active_connections"] == CONNECTIONS


@pytest.mark.redis
async def test_stats_asks_redis_for_the_cluster_count_at_most_once_in_a_while(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET)
    async with WebSocketConnectionManager(config) as manager:
        await manager.connect("a", FakeSocket("a"))
        asked = 0
        count = manager.get_cluster_connection_count

        async def counted() -> int:
            nonlocal asked
            asked += 1
            return await count()

        monkeypatch.setattr(manager, "get_cluster_connection_count", counted)
        app = FastAPI()
        app.include_router(router(manager))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            bodies = [(await http.get("/stats")).json() for _ in range(5)]
        assert [body["cluster_connections"] for body in bodies] == [1] * 5
        assert asked == 1
