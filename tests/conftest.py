"""Fixtures: a real Redis server for the whole session, unique namespaces, managers."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.errors import ConfigError
from tests.support.redis_server import (
    EXTERNAL_URL_ENV,
    ExternalRedis,
    NoRedisServer,
    RedisClusterServers,
    RedisSentinelSetup,
    RedisServer,
)

_NAMESPACES = itertools.count(1)
_E2E = Path(__file__).resolve().parent / "e2e"
#: Fixtures that start or hand out a real Redis: a test asking for one is marked `redis`.
REDIS_FIXTURES = frozenset({"redis_server", "redis_url", "redis_cluster", "redis_sentinel",
                            "private_redis", "private_cluster",
                            "replicated_cluster"})


def pytest_configure() -> None:
    """Refuse to start when the shell holds a STABILIZER_ variable the replicas would refuse
    (the e2e replicas inherit it): one clear line, not a replica that never serves."""
    prefixed = {key: value for key, value in os.environ.items()
                if key.startswith("STABILIZER_")}
    try:
        WebSocketConfig.from_env(prefixed)
    except ConfigError as exc:
        raise pytest.UsageError(f"{exc}\n(the suite's own variables take no STABILIZER_ "
                                f"prefix: an external Redis for it is {EXTERNAL_URL_ENV})"
                                ) from exc


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the markers true, so that `-m "not e2e"` really starts no server: every test in
    tests/e2e is marked `e2e` and every test that asks for a Redis fixture is marked
    `redis` (a pytestmark in a conftest applies to nothing, so mark the test modules)."""
    problems = []
    for item in items:
        if _E2E in Path(str(item.path)).parents and item.get_closest_marker("e2e") is None:
            problems.append(f"{item.nodeid}: in tests/e2e but not marked e2e")
        uses = REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses and item.get_closest_marker("redis") is None:
            problems.append(f"{item.nodeid}: uses {sorted(uses)} but not marked redis")
    if problems:
        raise pytest.UsageError("unmarked tests:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    """One Redis for the session: $TEST_STABILIZER_REDIS_URL, else a server started here.
    Fails (never skips) when none can be had."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    try:
        server: RedisServer | ExternalRedis = (
            ExternalRedis(external) if external else RedisServer())
        with server:
            yield server
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)


def _three_masters(replicas: int = 0) -> Iterator[RedisClusterServers]:
    try:
        servers = RedisClusterServers(replicas=replicas)
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    with servers:
        yield servers


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-master Redis Cluster for the session (fails, never skips, without Redis)."""
    yield from _three_masters()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSetup]:
    """A master, a replica and a sentinel for the session (fails, never skips, without
    Redis); `url` is its redis+sentinel:// URL."""
    try:
        setup = RedisSentinelSetup()
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    with setup:
        yield setup


@pytest.fixture
def redis_url(redis_server: RedisServer | ExternalRedis) -> str:
    """The session server's URL (each test still gets its own namespace)."""
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test uses."""
    return f"t{os.getpid()}-{next(_NAMESPACES)}"


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[RedisClusterServers]:
    """A three-master Cluster only this module's tests use (for restarts, CLIENT KILL and
    exact command counts; fails, never skips, without Redis)."""
    yield from _three_masters()


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterServers]:
    """Three masters with a replica each, only this module's tests use (for graceful
    failovers, which move masters; fails, never skips, without Redis)."""
    yield from _three_masters(replicas=1)


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
