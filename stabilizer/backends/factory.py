"""Pick the backend a config asks for: Redis with ``redis_url`` (or a client), else the
embedded in-process one."""

from __future__ import annotations

from typing import Any

from stabilizer.backends.base import Backend
from stabilizer.backends.memory import MemoryBackend
from stabilizer.config import WebSocketConfig
from stabilizer.errors import ConfigError


def backend_for(config: WebSocketConfig, redis: Any = None) -> Backend:
    """The backend for `config`; `redis` is an existing redis.asyncio client to use.

    Raises:
        ConfigError: Redis is asked for but the ``redis`` extra is not installed.
    """
    if redis is None and config.redis_url is None:
        return MemoryBackend()
    try:
        from stabilizer.backends.redis import RedisBackend
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "redis_url needs the redis extra: pip install 'fastapi-stabilizer[redis]'"
        ) from exc
    return RedisBackend.from_config(config, client=redis)


def check_redis_url(url: str) -> None:
    """Parse `url` as the Redis backend would, without connecting (nothing when the
    ``redis`` extra is missing: backend_for says so).

    Raises:
        ConfigError: a URL the Redis backend would not accept.
    """
    try:
        from stabilizer.backends.redis.connect import check_url
    except ImportError:  # pragma: no cover - depends on the installed extras
        return
    check_url(url)


def backend_after(old: Backend, config: WebSocketConfig, redis: Any = None) -> Backend:
    """The backend for a node starting again (in a new event loop, or after a shutdown),
    when `old` came from backend_for(config, redis): the in-process one on the same hub
    (its tokens, sessions and the presence its node left stay), else a new Redis backend
    (redis-py's clients hold connections of the loop that made them; the application's
    own client, `redis`, had its idle ones closed when the old backend closed)."""
    if isinstance(old, MemoryBackend):
        return old.successor()
    return backend_for(config, redis)
