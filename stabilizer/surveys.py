"""What the ops endpoints read of a node without stalling it: the local pool surveyed a
slice of connections per loop pass (outboxes, estimated memory), and the cluster-wide
counts from the shared store, cached (`/stats`, and `/metrics` through metrics.py). No
prometheus-client here: `/stats` is served without the ``metrics`` extra."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stabilizer.errors import BackendUnavailable
from stabilizer.manager import WebSocketConnectionManager
from stabilizer.node.context import Phase

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the shared store says about the whole cluster."""

    connections: int
    nodes: int


@dataclass(slots=True)
class PoolView:
    """Totals over this node's connections (outboxes and estimated memory)."""

    outbox_frames: int = 0
    outbox_bytes: int = 0
    outbox_max_frames: int = 0
    memory_bytes: int = 0
    connections: int = 0

    def memory_usage(self) -> dict[str, int | float]:
        """As manager.get_memory_usage() says it."""
        count = self.connections
        return {"total_memory": self.memory_bytes, "connection_count": count,
                "per_connection_average": self.memory_bytes / count if count else 0.0,
                "queued_bytes": self.outbox_bytes}


def survey(manager: WebSocketConnectionManager, view: PoolView) -> Iterator[None]:
    """Add every local connection to `view`, pausing (yield) after each slice of
    max_concurrent_broadcast connections so a caller can let the event loop run."""
    slice_size = budget = manager.config.max_concurrent_broadcast
    for shard in manager.pool.shards():
        for conn in shard:
            depth = len(conn.outbox)
            view.outbox_frames += depth
            view.outbox_max_frames = max(view.outbox_max_frames, depth)
            view.outbox_bytes += conn.queued_bytes
            view.memory_bytes += conn.memory_estimate()
            view.connections += 1
            budget -= 1
            if budget <= 0:
                budget = slice_size
                yield


class ClusterCache:
    """Cluster-wide gauges, fetched at most every `max_age` seconds and never for longer
    than op_timeout; absent (None) after a failed fetch until one succeeds."""

    def __init__(self, max_age: float, clock: Callable[[], float]) -> None:
        self.value: ClusterView | None = None
        self._max_age = max_age
        self._clock = clock
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def _is_fresh(self) -> bool:
        return self._clock() - self._fetched_at < self._max_age

    async def refresh(self, manager: WebSocketConnectionManager) -> None:
        """Fetch the gauges unless the cached ones are recent enough."""
        if not manager.backend.is_shared or manager.phase is not Phase.RUNNING:
            self.value = None
            return
        if self._is_fresh():
            return
        # A scrape never waits longer than op_timeout, and no fetch outlives the scrape that
        # started it; until one succeeds, the cluster gauges are left out rather than stale.
        try:
            async with asyncio.timeout(manager.config.op_timeout), self._lock:
                if self._is_fresh():  # another scrape fetched while this one waited
                    return
                # the gauges stay as they were while they are fetched (a scrape meanwhile
                # reads them, or waits here for the fetch); a failing store is retried
                # after max_age
                try:
                    view = ClusterView(await manager.get_cluster_connection_count(),
                                       len(await manager.get_nodes()))
                except BaseException:
                    self.value, self._fetched_at = None, self._clock()
                    raise
                self.value, self._fetched_at = view, self._clock()
        except (BackendUnavailable, TimeoutError) as exc:
            logger.debug("cluster gauges not refreshed: %s", exc or type(exc).__name__)
