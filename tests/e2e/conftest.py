"""End-to-end fixtures: uvicorn processes serving tests/e2e/app.py, and headless Chromium
for the browser tests."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from tests.support.browser import Browser, Page, checked_page, chromium
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess, start_all

Launcher = Callable[..., UvicornProcess]


@pytest.fixture
def launch() -> Iterator[Launcher]:
    """Start uvicorn processes with STABILIZER_* settings; all are stopped at teardown."""
    started: list[UvicornProcess] = []

    def start(**settings: object) -> UvicornProcess:
        env = {f"STABILIZER_{key.upper()}": str(value) for key, value in settings.items()}
        proc = UvicornProcess(env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


_RUN = itertools.count(1)
Replicas = Callable[..., list[UvicornProcess]]


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[Replicas]:
    """Start N replicas sharing one namespace on `redis_url` (default: the session server)."""
    started: list[UvicornProcess] = []

    def start(
        count: int = 3, redis_url: str | None = None, **settings: object
    ) -> list[UvicornProcess]:
        namespace = f"e2e{os.getpid()}-{next(_RUN)}"
        procs = []
        for index in range(count):
            env = {
                "STABILIZER_REDIS_URL": redis_url or redis_server.url,
                "STABILIZER_NAMESPACE": namespace,
                "STABILIZER_NODE_ID": f"replica-{index}",
                "STABILIZER_HEARTBEAT_INTERVAL": "3600",
                "STABILIZER_HEARTBEAT_TIMEOUT": "3600",
                **{f"STABILIZER_{k.upper()}": str(v) for k, v in settings.items()},
            }
            procs.append(UvicornProcess(env=env))
        start_all(procs)  # a failure stops the ones it started, then raises
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop()


V2Replicas = Callable[..., list[UvicornProcess]]
V2_SECRET = "v2-client-e2e-secret-" + "s" * 24  # tests/e2e/v2_app.py's JWT key in the tests


@pytest.fixture
def v2_replicas(request: pytest.FixtureRequest) -> Iterator[V2Replicas]:
    """Start N replicas of tests/e2e/v2_app.py with STABILIZER_* settings (heartbeats off);
    N > 1 share a namespace on the session's Redis, or on the `redis_url` setting's (mark
    such a test `redis`)."""
    started: list[UvicornProcess] = []

    def start(count: int = 1, **settings: object) -> list[UvicornProcess]:
        namespace = f"v2-{os.getpid()}-{next(_RUN)}"
        quiet = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
        procs = []
        for index in range(count):
            env = {"V2_APP_JWT_SECRET": V2_SECRET, "STABILIZER_NODE_ID": f"replica-{index}",
                   **{f"STABILIZER_{key.upper()}": str(value)
                      for key, value in {**quiet, **settings}.items()}}
            if "redis_url" in settings:  # another Redis (a Cluster): the caller's
                env.update(STABILIZER_NAMESPACE=namespace)
            elif count > 1:
                redis: RedisServer = request.getfixturevalue("redis_server")
                env.update(STABILIZER_REDIS_URL=redis.url, STABILIZER_NAMESPACE=namespace)
            procs.append(UvicornProcess(app="tests.e2e.v2_app:app", env=env))
        start_all(procs)
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, one for each test module that asks (in the module's event loop)."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
def page_options() -> dict[str, Any]:
    """The options of the browser context `page` opens; a module overrides this fixture
    to set them (a viewport for its screenshots, say)."""
    return {}


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, page_options: dict[str, Any]) -> AsyncIterator[Page]:
    """A fresh browser context; any uncaught error on the page fails the test."""
    async with checked_page(browser, **page_options) as opened:
        yield opened
