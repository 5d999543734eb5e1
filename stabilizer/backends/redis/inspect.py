"""Read-only views of a namespace for the inspection CLI: every call bounded, every failure
a BackendUnavailable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stabilizer.backends.redis.backend import RedisBackend
from stabilizer.backends.redis.core import text
from stabilizer.errors import BackendUnavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A live node: its client count and liveness deadline (ms, Redis clock)."""

    node_id: str
    clients: int
    deadline_ms: float
    now_ms: float


def check_url(url: str) -> None:
    """Raise ValueError for a URL redis-py would not accept (an unknown scheme, ...)."""
    parse_url(url)


def open_backend(url: str, namespace: str, buckets: int, timeout: float) -> RedisBackend:
    """A backend over a client that fails fast (no retry, `timeout` on every socket call)."""
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                            retry=Retry(NoBackoff(), 0))
    return RedisBackend(client, namespace=namespace, owns_client=True,
                        presence_buckets=buckets, op_timeout=timeout)


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
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(str(exc) or f"no answer within {self._timeout:g}s") from exc

    async def live_nodes(self) -> list[NodeRow]:
        """Nodes whose deadline (Redis clock) has not passed, with their client counts."""
        client, keys = self._client, self._keys
        seconds, micros = await self.ask(client.time())
        now_ms = seconds * 1000 + micros // 1000
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
        prefix = self._keys.group_prefix
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        keys: dict[str, bytes] = {}
        cursor = 0
        while True:
            cursor, batch = cast(tuple[int, list[bytes]], await self.ask(  # redis-py: a union
                client.scan(cursor, match=pattern, count=1000)))
            keys.update((text(key)[len(prefix):], key) for key in batch)  # raw user strings
            if int(cursor) == 0:
                break
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
