"""Prometheus export: a collector that reads one manager's counters when it is scraped.

Nothing here runs on a hot path. Every value is read at scrape time from what the node
already keeps: the counters and fan-out histogram in `manager.stats`, the local pool (outbox
depth, memory), and the backend's per-operation stats. The cluster-wide gauges need the
shared store; they are cached and fetched at most every `cluster_max_age` seconds, and a
scrape never waits on the store for longer than ``op_timeout``::

    exporter = exporter_for(manager)       # one CollectorRegistry per manager
    body = await exporter.render()         # text exposition format 0.0.4, see CONTENT_TYPE

Needs the ``metrics`` extra (prometheus-client); the rest of stabilizer works without it.
Every series carries a ``node_id`` label.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Final

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "stabilizer.metrics needs prometheus-client: pip install 'fastapi-stabilizer[metrics]'"
    ) from exc

from stabilizer import __version__
from stabilizer.manager import WebSocketConnectionManager
from stabilizer.stats import BackendStats, Histogram, NodeStats
from stabilizer.surveys import ClusterCache, ClusterView, PoolView, survey

logger = logging.getLogger(__name__)

#: The media type of what render() returns (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: NodeStats counter -> (metric name without ``_total``, help text).
COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "connects": ("stabilizer_connections_opened", "Connections admitted by this node."),
    "disconnects": ("stabilizer_connections_closed", "Connections released by this node."),
    "replaced": ("stabilizer_connections_replaced",
                 "Sockets closed because their client id connected again (4500)."),
    "refused_connections": ("stabilizer_connections_refused",
                            "Sockets refused at admission (token, limits, shutdown)."),
    "messages_in": ("stabilizer_messages_in", "Messages received from clients."),
    "messages_out": ("stabilizer_messages_out", "Frames handed to local connections."),
    "bytes_out": ("stabilizer_messages_out_bytes", "Bytes of frames handed to connections."),
    "broadcasts": ("stabilizer_broadcasts", "Broadcasts started on this node."),
    "overflow_closes": ("stabilizer_overflow_closes",
                        "Connections closed as too slow: outbox full or write timeout (1013)."),
    "oversize_closes": ("stabilizer_oversize_closes",
                        "Connections closed for a frame over max_message_size (1009)."),
    "heartbeat_timeouts": ("stabilizer_heartbeat_timeouts",
                           "Connections closed for a missed heartbeat deadline (4000)."),
    "pings_sent": ("stabilizer_pings_sent", "Heartbeat pings sent."),
    "pongs": ("stabilizer_pongs_received", "Heartbeat pongs received."),
    "memory_evictions": ("stabilizer_memory_evictions",
                         "Connections evicted under max_total_memory (4001)."),
    "tokens_issued": ("stabilizer_tokens_issued", "Reconnect tokens issued."),
    "resumed_sessions": ("stabilizer_sessions_resumed", "Connections that resumed a session."),
    "wire_errors": ("stabilizer_wire_errors",
                    "Undecodable envelopes or events from the backend, dropped."),
    "stream_gaps": ("stabilizer_stream_gaps", "Gaps seen in a stream's offsets (pub/sub loss)."),
    "gaps_filled": ("stabilizer_stream_gaps_filled", "Stream gaps filled from history."),
    "rate_limited": ("stabilizer_messages_rate_limited",
                     "Inbound messages over the per-client rate limit."),
    "backend_reconnects": ("stabilizer_backend_reconnects",
                           "Times the subscription to the backend was lost and restarted."),
    "rpc_calls": ("stabilizer_rpc_calls", "Remote procedure calls answered."),
    "rpc_failures": ("stabilizer_rpc_failures",
                     "Remote procedure calls answered with an error."),
}


class StabilizerCollector:
    """A prometheus-client collector reading one manager at scrape time.

    collect() only reads memory and must run on the manager's event loop thread; await
    `refresh()` just before it, as MetricsExporter.render does, to survey the pool without
    stalling the loop and to update the cached cluster gauges.
    """

    def __init__(
        self,
        manager: WebSocketConnectionManager,
        *,
        cluster_max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A weak reference: the per-manager registry cache must not keep the manager alive.
        self._manager = weakref.ref(manager)
        self.cluster = ClusterCache(cluster_max_age, clock)
        self._pool: PoolView | None = None

    async def refresh(self) -> None:
        """Survey the local pool a slice at a time (a large node never stalls its loop for a
        scrape) and update the cluster gauges if they are stale (bounded by op_timeout)."""
        manager = self._manager()
        if manager is None:
            return
        view = PoolView()
        for _ in survey(manager, view):
            await asyncio.sleep(0)
        self._pool = view
        await self.cluster.refresh(manager)

    def collect(self) -> Iterator[Metric]:
        """Yield every stabilizer metric family of this node."""
        manager = self._manager()
        if manager is None:
            return
        node = manager.node_id
        yield from _counters(manager.stats, node)
        yield from self._gauges(manager, node)
        yield _histogram("stabilizer_broadcast_fanout_seconds",
                         "Time to hand one broadcast to every local recipient.",
                         ["node_id"], [([node], manager.stats.fanout_seconds)])
        yield from _backend_metrics(manager.backend.stats, node)

    def _gauges(self, manager: WebSocketConnectionManager, node: str) -> Iterator[Metric]:
        pool, self._pool = self._pool, None  # a survey is used by one scrape only
        if pool is None:  # collected without refresh(): survey in one go
            pool = PoolView()
            for _ in survey(manager, pool):
                pass
        backend = manager.backend
        cluster = self.cluster.value
        values: list[tuple[str, str, float | None]] = [
            ("stabilizer_connections", "Clients connected to this node.",
             manager.get_connection_count()),
            ("stabilizer_outbox_frames", "Frames queued in local outboxes.",
             pool.outbox_frames),
            ("stabilizer_outbox_bytes", "Bytes queued in local outboxes.", pool.outbox_bytes),
            ("stabilizer_outbox_max_frames", "Frames queued in the deepest local outbox.",
             pool.outbox_max_frames),
            ("stabilizer_memory_bytes", "Estimated bytes held by local connections.",
             pool.memory_bytes),
            ("stabilizer_accepting", "1 while this node admits new connections.",
             int(manager.is_accepting)),
            ("stabilizer_backend_available", "1 while the backend answers.",
             int(backend.available)),
            ("stabilizer_cluster_connections", "Clients connected to any node (cached).",
             None if cluster is None else cluster.connections),
            ("stabilizer_cluster_nodes", "Live nodes in the cluster (cached).",
             None if cluster is None else cluster.nodes),
        ]
        for name, documentation, value in values:
            if value is not None:  # a cluster gauge we could not fetch is left out
                yield _gauge(name, documentation, node, value)
        info = GaugeMetricFamily("stabilizer_info", "Version and backend of this node.",
                                 labels=["node_id", "version", "backend"])
        info.add_metric([node, __version__, backend.name], 1)
        yield info


def _gauge(name: str, documentation: str, node: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["node_id"])
    family.add_metric([node], value)
    return family


def _counters(stats: NodeStats, node: str) -> Iterator[Metric]:
    for field, value in stats.as_dict().items():
        name, documentation = COUNTERS.get(field, (f"stabilizer_{field}", f"NodeStats.{field}."))
        family = CounterMetricFamily(name, documentation, labels=["node_id"])
        family.add_metric([node], value)
        yield family


def _backend_metrics(stats: BackendStats, node: str) -> Iterator[Metric]:
    latency = sorted(stats.latency.items())
    yield _histogram("stabilizer_backend_operation_seconds",
                     "Duration of backend (Redis) operations, by script or command.",
                     ["node_id", "operation"], [([node, op], h) for op, h in latency])
    errors = CounterMetricFamily("stabilizer_backend_operation_errors",
                                 "Backend (Redis) operations that failed or timed out.",
                                 labels=["node_id", "operation"])
    for operation, count in sorted(stats.errors.items()):
        errors.add_metric([node, operation], count)
    yield errors


def _histogram(
    name: str, documentation: str, labels: list[str],
    series: Iterable[tuple[list[str], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        buckets = [("+Inf" if math.isinf(bound) else repr(bound), float(count))
                   for bound, count in histogram.cumulative()]
        family.add_metric(values, buckets, sum_value=histogram.total)
    return family


class MetricsExporter:
    """One manager's CollectorRegistry; applications may register their own collectors."""

    def __init__(
        self,
        manager: WebSocketConnectionManager,
        *,
        cluster_max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.collector = StabilizerCollector(manager, cluster_max_age=cluster_max_age,
                                             clock=clock)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        self._rendering: asyncio.Future[bytes] | None = None

    async def render(self) -> bytes:
        """Refresh the cluster gauges if stale, then return the text exposition. Scrapes
        that come while one renders get its text: one survey of the pool serves them all
        (each used to survey into the collector's one slot, and one that found it taken
        surveyed the whole pool in one pass, stalling the loop)."""
        rendering = self._rendering
        if rendering is None or rendering.get_loop() is not asyncio.get_running_loop():
            rendering = self._rendering = asyncio.ensure_future(self._render())
            rendering.add_done_callback(self._rendered)
        return await asyncio.shield(rendering)

    async def _render(self) -> bytes:
        await self.collector.refresh()
        return generate_latest(self.registry)

    def _rendered(self, rendering: asyncio.Future[bytes]) -> None:
        if self._rendering is rendering:
            self._rendering = None
        if not rendering.cancelled():
            rendering.exception()  # (retrieved: its scrapes raise it)


_EXPORTERS: weakref.WeakKeyDictionary[WebSocketConnectionManager, MetricsExporter] = (
    weakref.WeakKeyDictionary()
)


def exporter_for(manager: WebSocketConnectionManager) -> MetricsExporter:
    """Return the manager's exporter, created on first use (never the global registry)."""
    exporter = _EXPORTERS.get(manager)
    if exporter is None:
        exporter = _EXPORTERS[manager] = MetricsExporter(manager)
    return exporter


async def metrics_response(manager: WebSocketConnectionManager) -> bytes:
    """Return the manager's metrics in the text exposition format (see CONTENT_TYPE)."""
    return await exporter_for(manager).render()


__all__ = [
    "CONTENT_TYPE",
    "COUNTERS",
    "ClusterView",
    "MetricsExporter",
    "PoolView",
    "StabilizerCollector",
    "exporter_for",
    "metrics_response",
]
