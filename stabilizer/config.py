"""WebSocketConfig: every option, validated on creation; from_env reads STABILIZER_* variables."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final, get_type_hints

from stabilizer.channel_options import ChannelNamespaces, ChannelOptions, check_namespaces
from stabilizer.config_env import settings_from_env
from stabilizer.config_limits import MIN_CLIENT_ID_LENGTH, check_numbers, check_seconds
from stabilizer.errors import ConfigError

_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: A part after a ':' that names a presence bucket ("0"), or a group's or client's keys in
#: the spread layout ("g", "c"): tags add such parts to the namespace (backends/redis/keys.py),
#: so a namespace holding one would name another namespace's keys ("app:0", bucket 0 of "app").
_TAG_PART_RE: Final = re.compile(r":(?:g|c|[0-9]+)(?=:|$)")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _DefaultLogLevel(str):
    """log_level's default: equal to "INFO", but not given, so it leaves logging alone."""

    __slots__ = ()


_DEFAULT_LOG_LEVEL: Final = _DefaultLogLevel("INFO")


class CompressionMode(StrEnum):
    """Per-message deflate: negotiated by the ASGI server, see ``uvicorn_options``."""

    DEFLATE = "deflate"
    NONE = "none"


class MemoryEvictionPolicy(StrEnum):
    """Which connection goes first when max_total_memory is exceeded.

    LRU: least recent frame received or written (a frame waiting in the outbox is not
    written yet). FIFO and OLDEST: earliest connected (the seed treats them alike; so do
    we). Either way a connection that would free under 1/16 of the largest holding left
    waits until that holder is gone (pure/eviction.py).
    """

    LRU = "lru"
    FIFO = "fifo"
    OLDEST = "oldest"


class HeartbeatType(StrEnum):
    """``ping``: the node sends ``{"type": "ping", ...}`` frames and expects pongs.

    ``custom``: the node sends nothing; the application's own traffic (any inbound frame, or
    ``handle_pong``) must arrive within heartbeat_timeout or the client is closed.
    """

    PING = "ping"
    CUSTOM = "custom"


class ShutdownMode(StrEnum):
    """What graceful_shutdown tells clients: ``stop`` closes 1001, ``restart`` closes 1012."""

    STOP = "stop"
    RESTART = "restart"


class RateLimitAction(StrEnum):
    """What happens to a frame over the inbound rate limit (docs/protocol.md section 3)."""

    DROP = "drop"  # dropped; a message gets {"type": "error", "code": "rate_limited"} back
    CLOSE = "close"  # the connection is closed with 1013 and retry advice (come back later)


class CloseCode(IntEnum):
    """Every close code stabilizer sends.

    4000-4499 mean "reconnect (with backoff)"; 4500-4999 mean "do not reconnect as is".
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # reconnect half
    HEARTBEAT_TIMEOUT = 4000
    MEMORY_EVICTED = 4001
    AUTH_EXPIRED = 4003  # credentials expired: reconnect with fresh ones
    USER_LIMIT = 4004  # the user holds max_connections_per_user connections: retry later
    # do-not-reconnect half
    REPLACED = 4500
    INVALID_TOKEN = 4501
    TOKEN_EXPIRED = 4502
    INVALID_CLIENT_ID = 4503
    AUTH_FAILED = 4505  # credentials missing, malformed, forged or not for this server

    @property
    def should_reconnect(self) -> bool:
        """True for codes after which a client should reconnect (with backoff)."""
        return should_reconnect(int(self))


def should_reconnect(code: int) -> bool:
    """Tell whether a client receiving close `code` should try again."""
    if 4000 <= code <= 4499:
        return True
    if 4500 <= code <= 4999:
        return False
    return code in (1001, 1005, 1006, 1011, 1012, 1013, 1014)


def _coerce_enum(name: str, enum_type: type[Enum], value: object) -> Enum:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value.lower())
        except ValueError:
            pass
    allowed = [str(member.value) for member in enum_type]
    raise ConfigError(f"{name} must be one of: {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """All settings of a manager; the first seventeen are fastapi-websocket-stabilizer's.

    log_level reads "INFO" by default, but only a level given (an argument, replace() or
    STABILIZER_LOG_LEVEL) is applied to the "stabilizer" logger when a manager is created:
    the default leaves the application's logging alone, as the seed did.

    Raises:
        ConfigError (a ValueError): when a value breaks its rule.
    """

    # --- fastapi-websocket-stabilizer 1.1.0 options, same defaults ---
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    heartbeat_type: HeartbeatType = HeartbeatType.PING
    max_connections: int | None = None
    max_message_size: int = 1024 * 1024
    reconnect_token_ttl: timedelta = field(default_factory=lambda: timedelta(hours=1))
    enable_reconnect: bool = True
    compression: CompressionMode = CompressionMode.DEFLATE
    # applied to the "stabilizer" logger only when given (see apply_log_level)
    log_level: str = _DEFAULT_LOG_LEVEL
    enable_metrics: bool = False
    num_shards: int = 16
    max_concurrent_cleanup: int = 100
    max_concurrent_broadcast: int = 1000
    memory_check_interval: float = 60.0
    memory_eviction_policy: MemoryEvictionPolicy = MemoryEvictionPolicy.LRU
    max_memory_per_connection: int | None = None
    max_total_memory: int | None = None

    # --- stabilizer: one node ---
    max_queue_size: int = 1024
    write_timeout: float = 10.0
    close_timeout: float = 2.0
    shutdown_mode: ShutdownMode = ShutdownMode.STOP
    # room for the longest derived client id, <user_id>/<device>: 256 + 1 + 64 (the least)
    max_client_id_length: int = MIN_CLIENT_ID_LENGTH
    retry_jitter: float = 5.0
    token_secret: str | tuple[str, ...] | None = field(default=None, repr=False)
    # how far apart the replicas' wall clocks may be: each checks a token's expiry on its
    # own, so a spent token's mark and a retired shared key outlive a token by this much
    max_clock_skew: float = 300.0
    rate_limit_messages: int | None = None
    rate_limit_window: float = 1.0
    rate_limit_action: RateLimitAction = RateLimitAction.DROP

    # --- stabilizer: users and protocol v2 ---
    max_connections_per_user: int | None = None
    connect_timeout: float = 10.0
    auth_refresh_grace: float = 10.0
    rpc_timeout: float = 30.0  # a procedure still running after this is cancelled
    # requests one connection may have unanswered (running, or waiting behind an earlier
    # one on their channel: session/calls.py says why those count too)
    rpc_max_in_flight: int = 16
    # channels a v2 client may subscribe one connection to (the application's joins too
    # count towards it, but are never refused)
    max_channels_per_connection: int | None = 128
    presence_diff_window: float = 0.05  # presence changes within it go out as one diff

    # --- stabilizer: history and resumable sessions (history_size > 0 enables them) ---
    history_size: int = 0
    history_ttl: float = 300.0
    session_ttl: float = 120.0
    cluster_events: bool = False

    # --- stabilizer: many nodes (Redis) ---
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_cluster: bool = False
    namespace: str = "stabilizer"
    node_id: str | None = None
    node_ttl: float = 10.0
    max_cluster_connections: int | None = None
    op_timeout: float = 2.0
    redis_pool_size: int = 64
    # a Redis call (connect, disconnect, token spend, session, history read) that met a
    # round trip of its script in flight waits up to this for more to share the next one
    # (backends/redis/batcher.py); 0: never held; at most op_timeout
    redis_batch_window: float = 0.005
    presence_buckets: int = 1
    # each group's keys in the group's own hash slot, each client's in the client's
    # (backends/redis/keys.py); None: on with redis_cluster, off on one server
    redis_spread_keys: bool | None = None

    # --- stabilizer: channel options per namespace ---
    # group-name prefix -> ChannelOptions (longest prefix wins; see channel_options.py)
    channel_namespaces: Mapping[str, ChannelOptions] = field(default_factory=ChannelNamespaces)

    def __post_init__(self) -> None:
        check_numbers(self)
        self._coerce_enums()
        ttl: object = self.reconnect_token_ttl  # seconds are accepted too
        if isinstance(ttl, int | float) and not isinstance(ttl, bool):
            check_seconds("reconnect_token_ttl", ttl)
            object.__setattr__(self, "reconnect_token_ttl", timedelta(seconds=ttl))
        elif not isinstance(ttl, timedelta):
            raise ConfigError(f"reconnect_token_ttl must be a timedelta or seconds, got {ttl!r}")
        check_seconds("reconnect_token_ttl", self.reconnect_token_ttl.total_seconds())
        for name in ("enable_reconnect", "enable_metrics", "cluster_events", "redis_cluster"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.redis_spread_keys is not None and not isinstance(self.redis_spread_keys, bool):
            raise ConfigError(f"redis_spread_keys must be True, False or None, got "
                              f"{self.redis_spread_keys!r}")
        if not isinstance(self.log_level, _DefaultLogLevel):  # (replace() passes it on)
            level = str(self.log_level).upper()
            if level not in _LOG_LEVELS:
                raise ConfigError(f"log_level must be a valid logging level, one of "
                                  f"{list(_LOG_LEVELS)}; got {self.log_level!r}")
            object.__setattr__(self, "log_level", level)
        object.__setattr__(self, "channel_namespaces",
                           check_namespaces(self.channel_namespaces))
        self._validate_identity()

    def _coerce_enums(self) -> None:
        for name, enum_type in (("heartbeat_type", HeartbeatType),
                                ("compression", CompressionMode),
                                ("memory_eviction_policy", MemoryEvictionPolicy),
                                ("shutdown_mode", ShutdownMode),
                                ("rate_limit_action", RateLimitAction)):
            object.__setattr__(self, name, _coerce_enum(name, enum_type, getattr(self, name)))

    def _validate_identity(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE_RE.fullmatch(self.namespace):
            raise ConfigError(
                f"namespace must be 1-64 characters of letters, digits and ._:-, got "
                f"{self.namespace!r}"
            )
        if _TAG_PART_RE.search(self.namespace):
            raise ConfigError(
                f"namespace parts after a ':' may not be g, c or a number (those name another "
                f"namespace's presence buckets and spread keys: 'app:0' shares keys with "
                f"'app'), got {self.namespace!r}"
            )
        if self.node_id is not None and (
            not isinstance(self.node_id, str) or not _NODE_ID_RE.fullmatch(self.node_id)
        ):
            raise ConfigError(
                f"node_id must be 1-64 characters of letters, digits and ._-, got {self.node_id!r}"
            )
        secret: object = self.token_secret
        if isinstance(secret, str):
            secret = (secret,)
        if secret is not None:
            if not isinstance(secret, tuple | list):
                raise ConfigError("token_secret must be a string or a sequence of strings")
            secret = tuple(secret)
            if not secret or any(not isinstance(key, str) or len(key) < 16 for key in secret):
                raise ConfigError("token_secret must be one or more strings of 16+ characters")
        object.__setattr__(self, "token_secret", secret)
        if self.redis_url is not None and not isinstance(self.redis_url, str):
            raise ConfigError(f"redis_url must be a string, got {self.redis_url!r}")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://", "redis+sentinel://")
        ):
            raise ConfigError(
                "redis_url must be a redis://, rediss://, unix:// or redis+sentinel:// URL"
            )

    @property
    def shutdown_close_code(self) -> CloseCode:
        """The close code graceful_shutdown sends by default."""
        if self.shutdown_mode is ShutdownMode.RESTART:
            return CloseCode.SERVICE_RESTART
        return CloseCode.GOING_AWAY

    @property
    def history_enabled(self) -> bool:
        """True when messages carry positions and sessions are resumable."""
        return self.history_size > 0

    def channel_options(self, group: str) -> ChannelOptions:
        """The options of `group`: its longest namespace prefix's, else the global ones."""
        namespaces = self.channel_namespaces
        assert isinstance(namespaces, ChannelNamespaces)  # (made one on creation)
        return namespaces.options_for(group)

    def keeps_history(self, group: str) -> bool:
        """True when messages sent to `group` are sequenced into its history stream."""
        return self.history_size > 0 and self.channel_options(group).history

    @property
    def token_keys(self) -> tuple[str, ...]:
        """The configured token keyring (first key signs, all verify); empty when unset."""
        secret = self.token_secret
        if secret is None:
            return ()
        return (secret,) if isinstance(secret, str) else secret

    @property
    def token_ttl_seconds(self) -> float:
        """reconnect_token_ttl in seconds."""
        return self.reconnect_token_ttl.total_seconds()

    @property
    def log_level_given(self) -> bool:
        """True when log_level was set (an argument, replace() or STABILIZER_LOG_LEVEL),
        not left at its default "INFO"."""
        return not isinstance(self.log_level, _DefaultLogLevel)

    def apply_log_level(self) -> None:
        """Set the level of the ``stabilizer`` logger hierarchy to log_level when it was
        given (no handler is added); the default leaves the level the application set, or
        the one it inherits, alone, as fastapi-websocket-stabilizer 1.1.0 did."""
        if self.log_level_given:
            logging.getLogger("stabilizer").setLevel(self.log_level)

    def replace(self, **changes: Any) -> WebSocketConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> WebSocketConfig:
        """Build a config from ``STABILIZER_<FIELD>`` variables; keyword overrides win.

        Raises:
            ConfigError: for an unknown STABILIZER_ variable, an empty one, or a value that
                does not parse.
        """
        env = os.environ if environ is None else environ
        values = settings_from_env(env, get_type_hints(cls), given=overrides.keys())
        values.update(overrides)
        return cls(**values)
