"""WebSocketConfig: seed-compatible defaults, validation, coercion, from_env; CloseCode halves."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from stabilizer.config import (
    CloseCode,
    CompressionMode,
    HeartbeatType,
    MemoryEvictionPolicy,
    ShutdownMode,
    WebSocketConfig,
    should_reconnect,
)
from stabilizer.errors import ConfigError, WebSocketStabilizerError
from stabilizer.node.context import default_node_id

KEY_A = "a" * 16
KEY_B = "b" * 32

# fastapi-websocket-stabilizer 1.1.0's documented defaults, written out independently.
SEED_DEFAULTS: dict[str, Any] = {
    "heartbeat_interval": 30.0,
    "heartbeat_timeout": 60.0,
    "heartbeat_type": "ping",
    "max_connections": None,
    "max_message_size": 1048576,
    "reconnect_token_ttl": timedelta(hours=1),
    "enable_reconnect": True,
    "compression": "deflate",
    "log_level": "INFO",
    "enable_metrics": False,
    "num_shards": 16,
    "max_concurrent_cleanup": 100,
    "max_concurrent_broadcast": 1000,
    "memory_check_interval": 60.0,
    "memory_eviction_policy": "lru",
    "max_memory_per_connection": None,
    "max_total_memory": None,
}


def build(name: str, value: object) -> WebSocketConfig:
    """A config with one field set (the value's type is what the test is about)."""
    changes: dict[str, Any] = {name: value}
    return WebSocketConfig(**changes)


# ----------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(("name", "expected"), sorted(SEED_DEFAULTS.items()))
def test_default_matches_the_seed(name: str, expected: object) -> None:
    assert getattr(WebSocketConfig(), name) == expected


def test_the_seed_options_come_first_in_the_seed_order() -> None:
    names = [f.name for f in dataclasses.fields(WebSocketConfig)]
    assert names[: len(SEED_DEFAULTS)] == list(SEED_DEFAULTS)


def test_default_enums_are_enum_members() -> None:
    config = WebSocketConfig()
    assert config.heartbeat_type is HeartbeatType.PING
    assert config.compression is CompressionMode.DEFLATE
    assert config.memory_eviction_policy is MemoryEvictionPolicy.LRU
    assert config.shutdown_mode is ShutdownMode.STOP


def test_default_token_settings() -> None:
    config = WebSocketConfig()
    assert config.token_secret is None
    assert config.token_keys == ()
    assert config.token_ttl_seconds == 3600.0
    assert config.max_clock_skew == 300.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e20, "300", True, None])
def test_max_clock_skew_must_be_positive_finite_seconds(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_clock_skew"):
        build("max_clock_skew", bad)


def test_max_clock_skew_takes_seconds_from_the_environment() -> None:
    config = WebSocketConfig.from_env({"STABILIZER_MAX_CLOCK_SKEW": "900"})
    assert config.max_clock_skew == 900.0
    with pytest.raises(ConfigError, match="MAX_CLOCK_SKEW"):
        WebSocketConfig.from_env({"STABILIZER_MAX_CLOCK_SKEW": "five minutes"})


def test_config_is_frozen() -> None:
    config = WebSocketConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_shards = 4  # type: ignore[misc]  # mutation is what is under test


# ----------------------------------------------------------------------------- validation

INVALID: list[tuple[str, object]] = [
    ("heartbeat_interval", 0),
    ("heartbeat_interval", -1.0),
    ("heartbeat_interval", float("nan")),
    ("heartbeat_interval", "30"),
    ("heartbeat_interval", None),
    ("heartbeat_interval", True),
    ("heartbeat_timeout", 0.0),
    ("heartbeat_timeout", -5),
    ("memory_check_interval", 0),
    ("write_timeout", 0),
    ("close_timeout", -0.1),
    ("op_timeout", 0),
    ("node_ttl", 0.5),
    ("node_ttl", 0),
    ("heartbeat_type", "pong"),
    ("heartbeat_type", None),
    ("heartbeat_type", 1),
    ("compression", "gzip"),
    ("compression", None),
    ("memory_eviction_policy", "mru"),
    ("memory_eviction_policy", 0),
    ("shutdown_mode", "reboot"),
    ("max_message_size", 0),
    ("max_message_size", -1),
    ("max_message_size", 1.5),
    ("max_message_size", "1024"),
    ("max_message_size", True),
    ("num_shards", 0),
    ("num_shards", 2.0),
    ("max_concurrent_cleanup", 0),
    ("max_concurrent_broadcast", -3),
    ("max_queue_size", 0),
    ("max_client_id_length", 0),
    ("max_connections", 0),
    ("max_connections", -1),
    ("max_connections", 1.5),
    ("max_connections", "10"),
    ("max_connections", False),
    ("max_memory_per_connection", 0),
    ("max_total_memory", -1),
    ("max_cluster_connections", 0),
    ("reconnect_token_ttl", 0),
    ("reconnect_token_ttl", -1),
    ("reconnect_token_ttl", timedelta(0)),
    ("reconnect_token_ttl", timedelta(seconds=-1)),
    ("reconnect_token_ttl", "3600"),
    ("reconnect_token_ttl", True),
    ("reconnect_token_ttl", None),
    ("log_level", "verbose"),
    ("log_level", None),
    ("log_level", 20),
    ("namespace", ""),
    ("namespace", "has space"),
    ("namespace", "x" * 65),
    ("namespace", "slash/es"),
    ("node_id", ""),
    ("node_id", "colon:not-allowed"),
    ("node_id", "n" * 65),
    ("token_secret", "short"),
    ("token_secret", "x" * 15),
    ("token_secret", ()),
    ("token_secret", []),
    ("token_secret", (KEY_A, "short")),
    ("token_secret", (KEY_A, 1234567890123456)),
    ("token_secret", b"b" * 16),
    ("redis_url", "http://localhost:6379"),
    ("redis_url", "localhost:6379"),
    ("redis_url", ""),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_raises_config_error(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        build(name, value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WebSocketStabilizerError)


# Invalid values that currently escape as something other than ConfigError, or pass.
INVALID_TYPES_AND_EDGES: list[Any] = [
    pytest.param("namespace", 5, id="namespace-int-TypeError"),
    pytest.param("node_id", 5, id="node_id-int-TypeError"),
    pytest.param("redis_url", 6379, id="redis_url-int-AttributeError"),
    pytest.param("token_secret", 5, id="token_secret-int-TypeError"),
    pytest.param("reconnect_token_ttl", float("inf"), id="ttl-inf-OverflowError"),
    pytest.param("reconnect_token_ttl", 1e20, id="ttl-huge-OverflowError"),
    pytest.param("reconnect_token_ttl", float("nan"), id="ttl-nan-plain-ValueError"),
    pytest.param("namespace", "stabilizer\n", id="namespace-trailing-newline-accepted"),
    pytest.param("node_id", "node-1\n", id="node_id-trailing-newline-accepted"),
    pytest.param("enable_reconnect", "no", id="enable_reconnect-str-accepted"),
    pytest.param("enable_metrics", "false", id="enable_metrics-str-false-accepted"),
]


@pytest.mark.parametrize(("name", "value"), INVALID_TYPES_AND_EDGES)
def test_invalid_value_raises_config_error_not_another_exception(name: str, value: object) -> None:
    with pytest.raises(ConfigError):
        build(name, value)


VALID: list[tuple[str, object]] = [
    ("heartbeat_interval", 0.001),
    ("heartbeat_interval", 5),
    ("heartbeat_timeout", 1),
    ("node_ttl", 1.0),
    ("max_connections", 1),
    ("max_total_memory", 10**12),
    ("namespace", "app:prod.v1_a-b"),
    ("namespace", "n" * 64),
    ("node_id", "web-1.eu_west"),
    ("node_id", "n" * 64),
    ("token_secret", "x" * 16),
    ("redis_url", "redis://localhost:6379/0"),
    ("redis_url", "rediss://h:6380"),
    ("redis_url", "unix:///tmp/redis.sock"),
    ("redis_url", "redis+sentinel://h:26379/mymaster"),
]


@pytest.mark.parametrize(("name", "value"), VALID)
def test_boundary_values_are_accepted(name: str, value: object) -> None:
    config = build(name, value)
    if name != "token_secret":
        assert getattr(config, name) == value


def test_heartbeat_timeout_may_be_shorter_or_longer_than_the_interval() -> None:
    assert WebSocketConfig(heartbeat_interval=30, heartbeat_timeout=10).heartbeat_timeout == 10
    assert WebSocketConfig(heartbeat_interval=30, heartbeat_timeout=90).heartbeat_timeout == 90


def test_default_node_id_is_a_valid_node_id() -> None:
    node_id = default_node_id()
    assert WebSocketConfig(node_id=node_id).node_id == node_id


def test_replace_changes_a_field_and_validates_again() -> None:
    config = WebSocketConfig(token_secret=KEY_A)
    changed = config.replace(num_shards=4)
    assert changed.num_shards == 4
    assert changed.token_keys == (KEY_A,)
    assert config.num_shards == 16
    with pytest.raises(ConfigError, match="num_shards"):
        config.replace(num_shards=0)


# ----------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("memory_eviction_policy", "LRU", MemoryEvictionPolicy.LRU),
        ("memory_eviction_policy", "Fifo", MemoryEvictionPolicy.FIFO),
        ("memory_eviction_policy", "oldest", MemoryEvictionPolicy.OLDEST),
        ("heartbeat_type", "CUSTOM", HeartbeatType.CUSTOM),
        ("heartbeat_type", "Ping", HeartbeatType.PING),
        ("compression", "NONE", CompressionMode.NONE),
        ("compression", "deflate", CompressionMode.DEFLATE),
        ("shutdown_mode", "RESTART", ShutdownMode.RESTART),
        ("shutdown_mode", ShutdownMode.STOP, ShutdownMode.STOP),
    ],
)
def test_string_enums_coerce_case_insensitively(name: str, raw: object, expected: object) -> None:
    value = getattr(build(name, raw), name)
    assert value is expected


def test_log_level_is_upper_cased() -> None:
    assert WebSocketConfig(log_level="debug").log_level == "DEBUG"
    assert WebSocketConfig(log_level="Warning").log_level == "WARNING"


@pytest.mark.parametrize(
    ("raw", "seconds"), [(90, 90.0), (0.5, 0.5), (timedelta(minutes=2), 120.0)]
)
def test_reconnect_token_ttl_accepts_seconds_or_timedelta(raw: object, seconds: float) -> None:
    config = WebSocketConfig(reconnect_token_ttl=raw)  # type: ignore[arg-type]  # seconds too
    assert config.reconnect_token_ttl == timedelta(seconds=seconds)
    assert config.token_ttl_seconds == seconds


def test_token_secret_string_becomes_a_one_key_tuple() -> None:
    config = WebSocketConfig(token_secret=KEY_A)
    assert config.token_secret == (KEY_A,)
    assert config.token_keys == (KEY_A,)


def test_token_secret_list_becomes_a_tuple_in_order() -> None:
    config = WebSocketConfig(token_secret=[KEY_B, KEY_A])  # type: ignore[arg-type]  # lists too
    assert config.token_secret == (KEY_B, KEY_A)
    assert config.token_keys == (KEY_B, KEY_A)


def test_shutdown_close_code_follows_the_mode() -> None:
    assert WebSocketConfig().shutdown_close_code is CloseCode.GOING_AWAY
    restart = WebSocketConfig(shutdown_mode="restart")  # type: ignore[arg-type]  # coerced
    assert restart.shutdown_close_code is CloseCode.SERVICE_RESTART


# ----------------------------------------------------------------------------- close codes


@pytest.mark.parametrize("code", [4000, 4001, 4250, 4499])
def test_codes_4000_to_4499_mean_reconnect(code: int) -> None:
    assert should_reconnect(code) is True


@pytest.mark.parametrize("code", [4500, 4501, 4750, 4999])
def test_codes_4500_to_4999_mean_do_not_reconnect(code: int) -> None:
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012, 1013, 1014])
def test_transient_standard_codes_mean_reconnect(code: int) -> None:
    assert should_reconnect(code) is True


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1007, 1008, 1009, 3000, 3999, 5000])
def test_final_or_unknown_codes_mean_do_not_reconnect(code: int) -> None:
    assert should_reconnect(code) is False


@pytest.mark.parametrize("member", list(CloseCode), ids=lambda m: m.name)
def test_custom_close_codes_sit_in_the_half_that_matches_their_property(
    member: CloseCode,
) -> None:
    assert member.should_reconnect is should_reconnect(int(member))
    if 4000 <= member <= 4999:
        assert member.should_reconnect is (member < 4500)


def test_named_close_codes_land_in_the_documented_half() -> None:
    reconnect = {CloseCode.HEARTBEAT_TIMEOUT, CloseCode.MEMORY_EVICTED,
                 CloseCode.AUTH_EXPIRED, CloseCode.USER_LIMIT, CloseCode.SERVICE_RESTART,
                 CloseCode.TRY_AGAIN_LATER, CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR}
    final = {CloseCode.REPLACED, CloseCode.INVALID_TOKEN, CloseCode.TOKEN_EXPIRED,
             CloseCode.INVALID_CLIENT_ID, CloseCode.AUTH_FAILED, CloseCode.NORMAL,
             CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG}
    assert reconnect | final == set(CloseCode)
    assert all(code.should_reconnect for code in reconnect)
    assert not any(code.should_reconnect for code in final)
