"""Memory guard and user data: per-connection and per-node limits, eviction by policy, and
application data attached to a connection (kept in the session with history)."""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any, Final

import msgpack

from stabilizer.config import CloseCode, MemoryEvictionPolicy
from stabilizer.connection.connection import Connection
from stabilizer.errors import (
    BackendUnavailable,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    MemoryLimitExceededError,
)
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.eviction import eviction_order
from stabilizer.pure.sizes import estimate_size
from stabilizer.pure.text import is_usable_id
from stabilizer.services.closing import Closing

logger = logging.getLogger(__name__)

#: How long an admission reuses the node's measured total (plus what it admitted since)
#: under max_total_memory: measuring it walks every connection, and a reconnect storm
#: admits thousands a second (each measuring it was N² work).
ADMISSION_TOTAL_MAX_AGE: Final = 0.5


class MemoryGuard:
    """Keeps a node within max_connections, max_memory_per_connection and max_total_memory."""

    def __init__(self, ctx: NodeContext, closing: Closing) -> None:
        self._ctx = ctx
        self._closing = closing
        self._backend_log = RateLimitedLog(logger)
        # the total an admission compares with the limit: measured at `_measured_at`, plus
        # the connections admitted since (a close since is not taken off: on the safe side)
        self._admitted_total = 0
        self._measured_at = float("-inf")

    def total(self) -> int:
        """Approximate bytes held by all local connections."""
        return sum(conn.memory_estimate() for conn in self._ctx.pool.connections())

    def usage(self) -> dict[str, int | float]:
        """{total_memory, connection_count, per_connection_average, queued_bytes}."""
        total = queued = count = 0
        for conn in self._ctx.pool.connections():
            total += conn.memory_estimate()
            queued += conn.queued_bytes
            count += 1
        return {"total_memory": total, "connection_count": count,
                "per_connection_average": total / count if count else 0.0,
                "queued_bytes": queued}

    def admit(self, conn: Connection, pending: int = 0) -> None:
        """Check a new connection against the node's limits, evicting others if needed;
        `pending` connections are being admitted besides those in the pool (each waits for
        its registration: counted, or a burst of connects would all pass one check).

        Raises:
            ConnectionLimitExceededError: max_connections reached.
            MemoryLimitExceededError: the connection, or the node, would exceed its limit.
        """
        config = self._ctx.config
        pool = self._ctx.pool
        size = conn.memory_estimate()
        per_conn = config.max_memory_per_connection
        if per_conn is not None and size > per_conn:
            raise MemoryLimitExceededError(
                f"connection needs {size} bytes; max_memory_per_connection is {per_conn}")
        is_new = pool.get(conn.client_id) is None
        if (is_new and config.max_connections is not None
                and len(pool) + pending >= config.max_connections):
            raise ConnectionLimitExceededError(
                f"maximum connections ({config.max_connections}) reached on node "
                f"{self._ctx.node_id}")
        limit = config.max_total_memory
        if limit is not None:
            total = self._total_for_admission()
            if total + size > limit:
                self._evict(total + size - limit)
                total = self._measure()
                if total + size > limit:
                    raise MemoryLimitExceededError(
                        f"cannot free enough memory: {total} used, {size} needed, limit {limit}")
            self._admitted_total += size

    def _total_for_admission(self) -> int:
        """The node's total as an admission sees it: measured again once it is older than
        ADMISSION_TOTAL_MAX_AGE."""
        if monotonic() - self._measured_at >= ADMISSION_TOTAL_MAX_AGE:
            return self._measure()
        return self._admitted_total

    def _measure(self) -> int:
        self._admitted_total = self.total()
        self._measured_at = monotonic()
        return self._admitted_total

    def check(self) -> int:
        """Enforce max_total_memory now; return bytes freed."""
        limit = self._ctx.config.max_total_memory
        if limit is None:
            return 0
        total = self.total()
        return self._evict(total - limit) if total > limit else 0

    def _evict(self, needed: int) -> int:
        """Close connections until `needed` bytes are freed, in the eviction policy's order
        (lru: least recent frame received or written; fifo/oldest: earliest connected) among
        those whose eviction frees at least 1/16 of the largest holding left: the healthy
        clients ahead of a stalled reader that holds the node's bytes in its outbox stay
        (pure/eviction.py)."""
        policy = self._ctx.config.memory_eviction_policy
        conns = self._ctx.pool.connections()
        if policy is MemoryEvictionPolicy.LRU:
            order = sorted(conns, key=lambda c: c.last_activity)
        else:
            order = sorted(conns, key=lambda c: c.created_at)
        freed = 0
        for conn in eviction_order([(conn, conn.memory_estimate()) for conn in order]):
            if freed >= needed:
                break
            freed += conn.memory_estimate()
            self._ctx.stats.memory_evictions += 1
            logger.info("evicting client %r under memory pressure (policy %s)",
                        conn.client_id, policy.value)
            self._closing.retire(conn, CloseCode.MEMORY_EVICTED,
                                 "evicted: node over its memory limit")
        return freed

    async def set_user_data(self, client_id: str, key: str, value: Any) -> None:
        """Attach `value` under `key` to the client's connection on this node.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            MemoryLimitExceededError: the value would take the connection over its limit.
            TypeError: with history, the value is not msgpack-serializable.
        """
        ctx = self._ctx
        conn = self._connection(client_id)
        if conn is None:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        new_size = estimate_size(key) + estimate_size(value)
        old_size = (estimate_size(key) + estimate_size(conn.user_data[key])
                    if key in conn.user_data else 0)
        limit = ctx.config.max_memory_per_connection
        after = conn.memory_estimate() - old_size + new_size
        if limit is not None and after > limit:
            raise MemoryLimitExceededError(
                f"user data {key!r} would take client {client_id!r} to {after} bytes; "
                f"limit is {limit}")
        if ctx.config.history_enabled:  # the session keeps it for a resume
            try:
                packed = msgpack.packb(value, use_bin_type=True)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"user data {key!r} must be msgpack-serializable when history is enabled"
                ) from exc
            try:
                await ctx.ask(ctx.backend.sessions.save_user_data(client_id, key, packed))
            except BackendUnavailable as exc:
                self._backend_log.warning("user data %r of %r kept locally only", key,
                                          client_id, exc=exc)
        conn.put_user_data(key, value, new_size)

    def get_user_data(self, client_id: str, key: str) -> Any | None:
        """The value stored under `key` for the client on this node, or None."""
        conn = self._connection(client_id)
        return None if conn is None else conn.user_data.get(key)

    def _connection(self, client_id: object) -> Connection | None:
        """The local connection of `client_id`; None for an id no client can have (a list
        is no dict key)."""
        if not is_usable_id(client_id, self._ctx.config.max_client_id_length):
            return None
        return self._ctx.pool.get(client_id)
