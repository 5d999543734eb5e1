"""Reports: what a node tells the others about itself with each keepalive.

Built from what the node keeps anyway (its counters, its pool, its backend's latency
histograms), once per keepalive (every ``node_ttl / 3``), never per message. The dashboard
reads them back for every node; for the node it is served by it takes a fresh one.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Final

from stabilizer.backends.base import NodeReport
from stabilizer.node.context import NodeContext

#: Groups a report names (the largest, by connected members on the node).
MAX_REPORTED_GROUPS: Final = 50


class Reporter:
    """Builds this node's reports; remembers the backend latency totals between them."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._seen = (0, 0.0)  # backend operations and their seconds at the last report
        self._latency_ms: float | None = None

    def current(self) -> NodeReport:
        """This node's report now (the backend latency is the last interval's)."""
        ctx = self._ctx
        stats = ctx.stats
        frames = depth = 0
        groups: Counter[str] = Counter()
        for conn in ctx.pool.connections():
            queued = len(conn.outbox)
            frames += queued
            depth = max(depth, queued)
            groups.update(conn.groups)
        return NodeReport(
            ctx.node_id, ctx.phase.value, time.time(), connections=len(ctx.pool),
            messages_in=stats.messages_in, messages_out=stats.messages_out,
            broadcasts=stats.broadcasts, outbox_frames=frames, outbox_max_frames=depth,
            backend_latency_ms=self._latency_ms,
            groups=dict(groups.most_common(MAX_REPORTED_GROUPS)))

    def next(self) -> NodeReport:
        """The report to write now: the backend latency becomes the mean over the
        operations since the previous one (None when none ran)."""
        histograms = list(self._ctx.backend.stats.latency.values())
        count = sum(h.count for h in histograms)
        seconds = sum(h.total for h in histograms)
        seen_count, seen_seconds = self._seen
        if count > seen_count:
            self._latency_ms = (seconds - seen_seconds) / (count - seen_count) * 1000
        else:
            self._latency_ms = None
        self._seen = (count, seconds)
        return self.current()
