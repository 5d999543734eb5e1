"""End-to-end fixtures: uvicorn processes serving tests/e2e/app.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

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
