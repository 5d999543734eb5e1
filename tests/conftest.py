"""Fixtures: a real Redis server for the whole session, unique namespaces, managers."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.support.redis_server import NoRedisServer, RedisClusterServers, RedisServer

_NAMESPACES = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session. Fails (never skips) when none can be started."""
    try:
        server = RedisServer()
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster for the session (fails, never skips, without Redis)."""
    try:
        servers = RedisClusterServers()
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    with servers:
        yield servers


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL (each test still gets its own namespace)."""
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test uses."""
    return f"t{os.getpid()}-{next(_NAMESPACES)}"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server only this test uses (for stop/restart chaos)."""
    try:
        server = RedisServer()
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


ManagerFactory = Callable[..., WebSocketConnectionManager]


@pytest.fixture
async def make_manager() -> AsyncIterator[ManagerFactory]:
    """Build managers (started lazily by the test); every one is shut down at teardown."""
    made: list[WebSocketConnectionManager] = []

    def factory(
        config: WebSocketConfig | None = None, **kwargs: object
    ) -> WebSocketConnectionManager:
        manager = WebSocketConnectionManager(config, **kwargs)  # type: ignore[arg-type]
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)
