"""log_level leaves the application's logging alone unless it is given: creating a manager
with the default config changed the "stabilizer" logger's level to INFO, over a level the
application had set (fastapi-websocket-stabilizer 1.1.0 never applied log_level)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager


@pytest.fixture
def stabilizer_logger() -> Iterator[logging.Logger]:
    """The "stabilizer" logger with no level of its own; its level is restored after."""
    logger = logging.getLogger("stabilizer")
    before = logger.level
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(before)


def test_the_applications_level_survives_a_manager_with_the_default_config(
    stabilizer_logger: logging.Logger,
) -> None:
    stabilizer_logger.setLevel(logging.WARNING)
    WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=30.0))
    assert stabilizer_logger.level == logging.WARNING
    assert not stabilizer_logger.isEnabledFor(logging.INFO)


def test_the_default_leaves_the_level_the_logger_inherits(
    stabilizer_logger: logging.Logger,
) -> None:
    WebSocketConnectionManager()
    assert stabilizer_logger.level == logging.NOTSET


def test_a_given_log_level_is_applied(stabilizer_logger: logging.Logger) -> None:
    WebSocketConnectionManager(WebSocketConfig(log_level="debug"))
    assert stabilizer_logger.level == logging.DEBUG


@pytest.mark.parametrize("config", [
    WebSocketConfig(log_level="INFO"),
    WebSocketConfig().replace(log_level="INFO"),
    WebSocketConfig.from_env({"STABILIZER_LOG_LEVEL": "info"}),
], ids=["argument", "replace", "environment"])
def test_the_default_value_given_explicitly_is_applied(
    stabilizer_logger: logging.Logger, config: WebSocketConfig,
) -> None:
    WebSocketConnectionManager(config)
    assert stabilizer_logger.level == logging.INFO


def test_the_default_reads_as_info_and_stays_the_default_through_replace() -> None:
    config = WebSocketConfig()
    assert config.log_level == "INFO"
    assert not config.log_level_given
    copy = config.replace(heartbeat_interval=5.0)
    assert copy.log_level == "INFO"
    assert not copy.log_level_given
    assert copy.replace(log_level="warning").log_level == "WARNING"
