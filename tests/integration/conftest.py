"""Fixtures the integration tests share."""

from __future__ import annotations

from typing import Any

import pytest

from stabilizer import WebSocketConfig


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def config(request: pytest.FixtureRequest) -> WebSocketConfig:
    """A manager's settings on each backend: the in-process one, and a real Redis (its own
    namespace). Heartbeats are far apart: a test's frames are its own."""
    settings: dict[str, Any] = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
    if request.param == "redis":
        settings.update(redis_url=request.getfixturevalue("redis_url"),
                        namespace=request.getfixturevalue("namespace"))
    return WebSocketConfig(**settings)
