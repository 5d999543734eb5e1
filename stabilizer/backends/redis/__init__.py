"""The Redis backend (the ``redis`` extra)."""

from stabilizer.backends.redis.backend import RedisBackend
from stabilizer.backends.redis.keys import KeyLayout

__all__ = ["KeyLayout", "RedisBackend"]
