"""Read-only views of a namespace for the inspection CLI: every call bounded, every failure
a BackendUnavailable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast

from redis.exceptions import RedisClusterException, RedisError

from stabilizer.backends.redis.backend import RedisBackend
from stabilizer.backends.redis.connect import check_url
from stabilizer.backends.redis.core import text
from stabilizer.backends.redis.replies import is_refusal
from stabilizer.config import WebSocketConfig
from stabilizer.errors import BackendRefused, BackendUnavailable

T = TypeVar("T")


class RedisRefused(BackendRefused):
    """Redis answered a command with an error (WRONGTYPE: a key of the namespace is not
    what the nodes write, another application's say): reachable, but of no use."""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A live node: its client count and liveness deadline (ms, Redis clock)."""

    node_id: str
    clients: int
    deadline_ms: float
    now_ms: float


__all__ = ["NodeRow", "RedisInspector", "check_url", "open_backend"]


def open_backend(config: WebSocketConfig) -> RedisBackend:
    """A backend for config.redis_url (standalone, Cluster or Sentinel, as the replicas
    connect); it connects on its first call."""
    return RedisBackend.from_config(config)


class RedisInspector:
    """Queries the CLI needs beyond the backend's roles."""

    def __init__(self, backend: RedisBackend, timeout: float) -> None:
        self._client = backend.client
        self._keys = backend.keys
        self._timeout = timeout

    async def ask(self, awaitable: Awaitable[T]) -> T:
        """Await one Redis command; raise BackendUnavailable when it fails or times out."""
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            if is_refusal(exc):
                raise RedisRefused(str(exc)) from exc
            raise BackendUnavailable(str(exc) or f"no answer within {self._timeout:g}s") from exc

    async def now_ms(self) -> float:
        """The Redis clock, in milliseconds (the clock node deadlines are set on)."""
        seconds, micros = await self.ask(self._client.time())
        return float(seconds * 1000 + micros // 1000)

    async def live_nodes(self) -> list[NodeRow]:
        """Nodes whose deadline (Redis clock) has not passed, with their client counts."""
        client, keys = self._client, self._keys
        now_ms = await self.now_ms()
        entries = cast(list[tuple[bytes, float]], await self.ask(client.zrangebyscore(
            keys.nodes, now_ms, "+inf", withscores=True)))  # redis-py: a union
        rows = []
        for raw, deadline in entries:
            node_id, clients = text(raw), 0
            for bucket in range(keys.buckets):
                clients += int(await self.ask(client.scard(keys.node_set(bucket, node_id))))
            rows.append(NodeRow(node_id, clients, deadline, now_ms))
        return sorted(rows, key=lambda row: row.node_id)

    async def group_counts(self) -> list[tuple[str, int]]:
        """Every group with members: SCAN MATCH on the group sets, then SCARD in batches."""
        client = self._client
        prefix, suffix = self._keys.group_key_bounds
        pattern = self._keys.group_key_pattern
        keys: dict[str, bytes] = {}
        # scan_iter: one SCAN cursor, or one per master of a Cluster (redis-py walks them)
        found = client.scan_iter(match=pattern, count=1000)
        while True:
            try:
                key = await self.ask(anext(found))
            except StopAsyncIteration:
                break
            name = text(key)[len(prefix):len(text(key)) - len(suffix)]
            keys[name] = key  # raw user strings
        names = sorted(keys)
        rows = []
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            async with client.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.scard(keys[name])
                counts = await self.ask(pipe.execute(raise_on_error=False))
            rows += [(name, count) for name, count in zip(chunk, counts, strict=True)
                     if isinstance(count, int) and count > 0]
        return rows

    async def broadcast_offset(self) -> int | None:
        """How many broadcasts the history stream has sequenced (None: history is off, or
        nothing was broadcast yet)."""
        raw = await self.ask(cast(Awaitable[bytes | None],  # redis-py: a union
                                  self._client.hget(self._keys.stream_meta("all"), "offset")))
        try:
            return None if raw is None else int(raw)
        except ValueError:  # (not what a node writes: a damaged or foreign key)
            return None
