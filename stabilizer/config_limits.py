"""The numeric rules of WebSocketConfig: which settings are positive, which may be None (no
limit), and the upper bounds of those that end up in Redis commands, scripts or timers, so
that a value Redis cannot take is refused on creation, not by the first broadcast."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from stabilizer.errors import ConfigError

if TYPE_CHECKING:
    from stabilizer.config import WebSocketConfig

#: The longest duration a setting takes (100 years): every one of them ends up as Redis
#: milliseconds or an event loop timer, and "forever" written as 1e16 must not overflow
#: those at run time, where it would pass for the backend being down.
MAX_SECONDS: Final = 100 * 365.25 * 86400

SECONDS: Final = ("heartbeat_interval", "heartbeat_timeout", "memory_check_interval",
                  "write_timeout", "close_timeout", "node_ttl", "op_timeout", "retry_jitter",
                  "rate_limit_window", "history_ttl", "session_ttl", "connect_timeout",
                  "auth_refresh_grace", "rpc_timeout", "max_clock_skew")
COUNTS: Final = ("max_message_size", "num_shards", "max_concurrent_cleanup",
                 "max_concurrent_broadcast", "max_queue_size", "max_client_id_length",
                 "presence_buckets", "redis_pool_size", "rpc_max_in_flight")
#: The waits that may be 0 (none), and their longest: a presence diff's (changes within
#: it go out as one) and a held Redis batch's (every connect in a storm may wait for it).
WINDOWS: Final = {"presence_diff_window": 60, "redis_batch_window": 1}
#: The settings whose None means "no limit": the only ones `none` or `null` may turn off
#: in the environment (config_env.py).
OPTIONAL_LIMITS: Final = frozenset({
    "max_connections", "max_memory_per_connection", "max_total_memory",
    "max_cluster_connections", "rate_limit_messages", "max_connections_per_user",
    "max_channels_per_connection"})

#: The longest user id and device id (pure/users.py holds their other rules). The client id
#: the server derives for an authenticated connection, ``<user_id>/<device>``, takes up to
#: MIN_CLIENT_ID_LENGTH characters: max_client_id_length may not be lower, or an identity
#: the authenticator accepted could never connect.
MAX_USER_ID_LENGTH: Final = 256
MAX_DEVICE_LENGTH: Final = 64
MIN_CLIENT_ID_LENGTH: Final = MAX_USER_ID_LENGTH + len("/") + MAX_DEVICE_LENGTH

#: The largest count Redis is asked to keep or compare (a stream's length, seats in the
#: cluster or per user): far above what one Redis holds, and far below where a Lua number
#: stops being an integer Redis accepts (1e17 is written "1e+17").
MAX_REDIS_COUNT: Final = 10**9
#: Upper bounds of the integer settings whose values reach Redis, and why.
MAXIMA: Final = {
    "history_size": (MAX_REDIS_COUNT, "entries a stream keeps"),
    "max_cluster_connections": (MAX_REDIS_COUNT, "seats counted in Redis"),
    "max_connections_per_user": (MAX_REDIS_COUNT, "seats counted in Redis"),
    "presence_buckets": (1024, "hash slots presence is spread over"),
    # a frame is published, and kept in history, with its envelope: Redis takes at most
    # 512 MB in one value (proto-max-bulk-len)
    "max_message_size": (256 * 2**20, "bytes a frame published through Redis may carry"),
    "max_client_id_length": (65_536, "characters of an id in every key and frame naming it"),
}


def check_positive(name: str, value: float | int | None, *, optional: bool = False) -> None:
    """Messages start as fastapi-websocket-stabilizer's did ("num_shards must be positive").

    Raises:
        ConfigError: `value` is not a positive finite number (nor None when `optional`).
    """
    if value is None and optional:
        return
    if (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            or not math.isfinite(value)):
        rule = "must be positive or None" if optional else "must be positive"
        raise ConfigError(f"{name} {rule} (a finite number), got {value!r}")


def check_seconds(name: str, value: float) -> None:
    """A positive duration of at most MAX_SECONDS.

    Raises:
        ConfigError: it is not.
    """
    check_positive(name, value)
    if value > MAX_SECONDS:
        raise ConfigError(f"{name} must be at most {MAX_SECONDS:.0f} seconds (100 years), "
                          f"got {value!r}")


def check_numbers(config: WebSocketConfig) -> None:
    """Every numeric rule of `config` (its types, signs and upper bounds).

    Raises:
        ConfigError: naming the first setting that breaks its rule.
    """
    for name in SECONDS:
        check_seconds(name, getattr(config, name))
    for name in COUNTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        check_positive(name, value)
    for name, most in WINDOWS.items():
        window = getattr(config, name)
        if isinstance(window, bool) or not isinstance(window, int | float) or not (
                0 <= window <= most):
            raise ConfigError(f"{name} must be 0 to {most} seconds, got {window!r}")
    if config.redis_batch_window > config.op_timeout:
        # a held call waits for the round trip in flight or the window, then its own: the
        # services allow it two op_timeouts (node/context.py within_round_trips)
        raise ConfigError(f"redis_batch_window ({config.redis_batch_window!r}) must be at "
                          f"most op_timeout ({config.op_timeout!r})")
    size = config.history_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"history_size must be 0 (off) or a positive integer, got {size!r}")
    for name in sorted(OPTIONAL_LIMITS):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{name} must be an integer or None, got {value!r}")
        check_positive(name, value, optional=True)
    for name, (maximum, what) in MAXIMA.items():
        value = getattr(config, name)
        if value is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum} ({what}), got {value!r}")
    if config.max_client_id_length < MIN_CLIENT_ID_LENGTH:
        raise ConfigError(
            f"max_client_id_length must be at least {MIN_CLIENT_ID_LENGTH}: a client id "
            f"<user_id>/<device> takes up to {MAX_USER_ID_LENGTH} + 1 + {MAX_DEVICE_LENGTH} "
            f"characters; got {config.max_client_id_length!r}")
    if config.node_ttl < 1.0:
        raise ConfigError("node_ttl must be at least 1 second")
    for limit in ("max_cluster_connections", "max_connections_per_user"):
        if config.presence_buckets > 1 and getattr(config, limit) is not None:
            raise ConfigError(f"{limit} needs presence_buckets=1 (the limit is enforced "
                              "atomically on one slot)")
