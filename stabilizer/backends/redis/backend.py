"""RedisBackend: the roles over one Redis (standalone, Cluster with sharded pub/sub, or
Sentinel). Every redis call of the library lives in this package.

keys.py names every key and channel; scripts.py holds the Lua; core.py runs each call under
op_timeout with a bounded number in flight and names it for the latency histogram. Every
operation is one round trip: a script or a single command.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from stabilizer.backends.base import TaskSpawner
from stabilizer.backends.redis.connect import client_for
from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.groups import RedisGroups
from stabilizer.backends.redis.history import RedisHistory
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.backends.redis.liveness import RedisLiveness
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.backends.redis.routing import RedisRouting
from stabilizer.backends.redis.sessions import RedisSessions
from stabilizer.backends.redis.spread import SpreadSteps
from stabilizer.backends.redis.tokens import RedisEvents, RedisTokens
from stabilizer.backends.redis.users import RedisUsers
from stabilizer.config import WebSocketConfig
from stabilizer.stats import BackendStats

logger = logging.getLogger(__name__)


class RedisBackend:
    """A node's view of the shared Redis."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        namespace: str = "stabilizer",
        presence_buckets: int = 1,
        owns_client: bool = False,
        op_timeout: float = 2.0,
        pool_size: int = 64,
        also_close: list[Any] | None = None,
        spread: bool | None = None,
        batch_window: float = 0.005,
    ) -> None:
        if spread is None:  # each group and client in its own slot: a Cluster's default
            spread = isinstance(client, RedisCluster)
        self._core = core = RedisCore(client, KeyLayout(namespace, presence_buckets, spread),
                                      op_timeout=op_timeout, pool_size=pool_size,
                                      batch_window=batch_window)
        self._owns_client = owns_client
        self._also_close = also_close or []
        self.presence = RedisPresence(core)
        self.users = RedisUsers(core)
        self.routing = RedisRouting(core)
        spread_steps = SpreadSteps(core, self.presence)
        self.groups = RedisGroups(core, self.routing, self.presence, spread_steps)
        self.history = RedisHistory(core, self.presence)
        self.sessions = RedisSessions(core, self.presence, spread_steps)
        self.tokens = RedisTokens(core)
        self.liveness = RedisLiveness(core)
        self.events = RedisEvents(core)

    @classmethod
    def from_config(cls, config: WebSocketConfig, client: Any = None) -> RedisBackend:
        """Build from config.redis_url, or wrap an existing redis.asyncio client."""
        owns = client is None
        extra: list[Any] = []
        if client is None:
            client, extra = client_for(config)
        return cls(client, namespace=config.namespace, presence_buckets=config.presence_buckets,
                   owns_client=owns, op_timeout=config.op_timeout,
                   pool_size=config.redis_pool_size, also_close=extra,
                   spread=config.redis_spread_keys, batch_window=config.redis_batch_window)

    @property
    def name(self) -> str:
        """``redis`` or ``redis-cluster``."""
        return "redis-cluster" if self._core.cluster else "redis"

    @property
    def is_shared(self) -> bool:
        """Always True: other nodes share this Redis."""
        return True

    @property
    def available(self) -> bool:
        """False after a command failed, until one succeeds again."""
        return self._core.available

    @property
    def stats(self) -> BackendStats:
        """Latency and errors per operation."""
        return self._core.stats

    @property
    def keys(self) -> KeyLayout:
        """The key layout of this namespace."""
        return self._core.keys

    @property
    def client(self) -> Redis | RedisCluster:
        """The underlying redis.asyncio client."""
        return self._core.client

    async def open(self, node_id: str, tasks: TaskSpawner, *, events: bool = False,
                   sessions: bool = False, receives: bool = True) -> None:
        """Take the node's identity and task owner; check that Redis answers and load the
        scripts (a node receives only once its listener subscribes: `receives` changes
        nothing here)."""
        core = self._core
        core.node_id = node_id
        core.tasks = tasks
        core.events = events
        core.sessions = sessions
        await core.call(core.client.ping(), "ping")
        await core.load_scripts()

    async def aclose(self) -> None:
        """Close the client if this backend created it (helper tasks belong to the node's
        task owner, which stops them first). The application's own client stays open; its
        idle pooled connections are closed, in the loop they belong to: the manager may
        start again in another loop (a second TestClient), where they could be neither
        used nor closed. From now on every call raises BackendNotReached: redis-py would
        connect again for it, and nothing would close that connection."""
        self._core.closed = True
        self._core.available = False
        if not self._owns_client:
            pool = getattr(self._core.client, "connection_pool", None)  # (not on a Cluster)
            if pool is not None:
                try:
                    await pool.disconnect(inuse_connections=False)
                except (RedisError, OSError):
                    logger.debug("error closing idle redis connections", exc_info=True)
            return
        for client in [self._core.client, *self._also_close]:
            try:
                await client.aclose()
            except (RedisError, OSError):
                logger.debug("error closing redis client", exc_info=True)
