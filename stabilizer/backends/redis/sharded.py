"""Sharded pub/sub over a Redis Cluster, one reader per shard."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stabilizer.backends.redis.core import RedisCore
from stabilizer.errors import BackendUnavailable


class ShardedSubscription:
    """Sharded pub/sub over a Redis Cluster: one connection per shard, read concurrently.

    redis-py's cluster pub/sub reads shards one after another, each with the full timeout,
    so a message on one shard can wait behind another shard's idle wait. Here every shard
    has its own reader task feeding one queue; a failing shard fails the whole subscription
    (the listener then resubscribes everything against the refreshed topology).

    A shard that stops serving a slot (a graceful failover, a migration) keeps the
    connection and pushes `sunsubscribe` for the slot's channels: those reach the caller
    like any confirmation, and it tells them from its own (routing.RedisRouting._read).
    """

    def __init__(self, core: RedisCore) -> None:
        assert isinstance(core.client, RedisCluster)
        self._core = core
        self._cluster: RedisCluster = core.client
        self._op_timeout = core.op_timeout
        self._shards: dict[str, tuple[Redis, Any, asyncio.Task[None]]] = {}
        # the shard each channel was subscribed on: the slot map may have changed since
        self._homes: dict[str, str] = {}
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

    def _owner(self, channel: str) -> Any:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise BackendUnavailable(f"no cluster node serves channel {channel!r}")
        return node

    async def _shard(self, channel: str) -> Any:
        node = self._owner(channel)
        self._homes[channel] = node.name
        shard = self._shards.get(node.name)
        if shard is None:
            client = Redis(host=node.host, port=node.port,
                           socket_connect_timeout=self._op_timeout,
                           retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub()
            reader = self._core.spawn(self._pump(pubsub), name=f"stabilizer-shard-{node.name}")
            shard = self._shards[node.name] = (client, pubsub, reader)
        return shard[1]

    async def _pump(self, pubsub: Any) -> None:
        try:
            while True:
                if not pubsub.subscribed:  # nothing to read before the first SSUBSCRIBE
                    await asyncio.sleep(0.05)
                    continue
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._queue.put_nowait(message)
        except (RedisError, OSError) as exc:
            self._queue.put_nowait(exc)

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE each channel on the shard that owns its slot."""
        for channel in channels:
            pubsub = await self._shard(channel)
            await pubsub.ssubscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """SUNSUBSCRIBE a channel, on the shard it was subscribed on."""
        home = self._homes.pop(channel, None)
        shard = self._shards.get(home) if home is not None else None
        if shard is None:  # not subscribed: confirmed all the same, as Redis would
            self._queue.put_nowait({"type": "sunsubscribe", "pattern": None,
                                    "channel": channel.encode(), "data": 0})
            return
        await shard[1].sunsubscribe(channel)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message from any shard, or None after `timeout` seconds of silence."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def ping(self) -> None:
        """PING every shard connection (the replies arrive as messages)."""
        for _, pubsub, _ in list(self._shards.values()):
            await pubsub.ping()

    async def aclose(self) -> None:
        """Stop the readers and close every shard connection (bounded by op_timeout)."""
        shards, self._shards = list(self._shards.values()), {}
        self._homes.clear()
        readers = [reader for _, _, reader in shards]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers, timeout=self._op_timeout)
        for client, pubsub, _ in shards:
            with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.aclose()
                    await client.aclose()
