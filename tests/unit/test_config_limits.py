"""Upper bounds of the settings that end up in Redis commands and scripts: a value Redis
cannot take is refused on creation, never found out by the first broadcast."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from stabilizer.backends.redis import RedisBackend
from stabilizer.config import WebSocketConfig
from stabilizer.config_limits import MAX_DEVICE_LENGTH, MAX_USER_ID_LENGTH, MIN_CLIENT_ID_LENGTH
from stabilizer.errors import ConfigError
from stabilizer.pure.text import check_client_id
from stabilizer.pure.users import client_id_of

TOO_LARGE = [
    # history_size above 2**63-1 passed, then every sequenced send failed in the SEQUENCE
    # script ("value is not an integer or out of range") and read as "redis unavailable"
    ("history_size", 2**63),
    ("history_size", 10**17),  # Lua writes 1e+17 for it: not an integer to XADD MAXLEN
    ("history_size", 10**9 + 1),
    ("max_cluster_connections", 10**9 + 1),
    ("max_connections_per_user", 10**9 + 1),
    ("max_client_id_length", 65_537),
    ("max_message_size", 256 * 2**20 + 1),
    ("reconnect_token_ttl", timedelta(days=36_600)),
    ("reconnect_token_ttl", 4e9),
]


@pytest.mark.parametrize(("name", "value"), TOO_LARGE)
def test_a_value_too_large_for_redis_is_refused_on_creation(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be at most"):
        WebSocketConfig(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [
    ("history_size", 10**9),
    ("max_cluster_connections", 10**9),
    ("max_connections_per_user", 10**9),
    ("max_client_id_length", 65_536),
    ("max_message_size", 256 * 2**20),
    ("reconnect_token_ttl", timedelta(days=36_500)),
])
def test_the_largest_value_is_accepted(name: str, value: object) -> None:
    config = WebSocketConfig(**{name: value})  # type: ignore[arg-type]
    assert getattr(config, name) == value


def test_client_ids_leave_room_for_the_longest_user_id_and_device() -> None:
    """A 256-character user id on a 64-character device is a 321-character client id: a
    lower limit refused every such identity at connect (4503) after accepting it."""
    longest = client_id_of("u" * MAX_USER_ID_LENGTH, "d" * MAX_DEVICE_LENGTH)
    assert len(longest) == MIN_CLIENT_ID_LENGTH == 321
    assert WebSocketConfig().max_client_id_length == MIN_CLIENT_ID_LENGTH
    assert WebSocketConfig(max_client_id_length=321).max_client_id_length == 321
    assert check_client_id(longest, WebSocketConfig().max_client_id_length) == longest
    for short in (320, 256, 1):
        with pytest.raises(ConfigError, match="max_client_id_length must be at least 321"):
            WebSocketConfig(max_client_id_length=short)
    with pytest.raises(ConfigError, match="at least 321"):
        WebSocketConfig.from_env({"STABILIZER_MAX_CLIENT_ID_LENGTH": "256"})


def test_the_environment_is_held_to_the_same_bounds() -> None:
    with pytest.raises(ConfigError, match="history_size must be at most 1000000000"):
        WebSocketConfig.from_env({"STABILIZER_HISTORY_SIZE": "9223372036854775808"})


@pytest.mark.parametrize("bad", [-0.001, 1.5, float("nan"), float("inf"), "0.005", True, None])
def test_the_redis_batch_window_is_0_to_1_second(bad: object) -> None:
    with pytest.raises(ConfigError, match="redis_batch_window must be 0 to 1 seconds"):
        WebSocketConfig(redis_batch_window=bad)  # type: ignore[arg-type]


def test_the_redis_batch_window_reaches_the_backend_from_the_environment() -> None:
    config = WebSocketConfig.from_env({"STABILIZER_REDIS_BATCH_WINDOW": "0",
                                       "STABILIZER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert config.redis_batch_window == 0
    assert WebSocketConfig().redis_batch_window == 0.005
    for window in (0.0, 0.02):
        backend = RedisBackend.from_config(replace(config, redis_batch_window=window))
        assert backend._core.batch_window == window
        assert backend.presence._registers._window == window
        assert backend.routing._routes._window == 0  # a direct send is never held


def test_the_redis_batch_window_is_at_most_op_timeout() -> None:
    """A held call waits for the round trip in flight or the window, whichever ends later,
    then its own round trip: within the services' bound of two op_timeouts only while the
    window is at most op_timeout. Past it, a token spend was reported failed (and its
    reconnect token spent in Redis all the same)."""
    with pytest.raises(ConfigError, match=r"redis_batch_window .* at most op_timeout"):
        WebSocketConfig(op_timeout=0.1, redis_batch_window=0.5)
    assert WebSocketConfig(op_timeout=0.1, redis_batch_window=0.1).redis_batch_window == 0.1
