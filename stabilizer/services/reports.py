"""Reports: what a node tells the others about itself with each keepalive.

Built from what the node keeps anyway (its counters, its pool, the index of its groups'
local members, its backend's latency histograms), once per keepalive (every
``node_ttl / 3``), never per message. The dashboard reads them back for every node; for
the node it is served by it takes a fresh one. Both walk the pool a slice of connections
at a time (max_concurrent_broadcast), letting the event loop run between slices, as
surveys.survey does: a node of many connections is never held for all of them at once.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Final

from stabilizer.backends.base import NodeReport
from stabilizer.node.context import NodeContext

#: Groups a report names (the largest, by connected members on the node).
MAX_REPORTED_GROUPS: Final = 50

#: The groups followed here with their local members, as of the call (a copy of the index:
#: a walk over it may pause while members come and go).
GroupIndex = Callable[[], Iterable[tuple[str, Sized]]]


@dataclass(slots=True)
class _Figures:
    """What one walk over the pool and the groups adds up."""

    outbox_frames: int = 0
    outbox_max_frames: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)  # a min-heap of the top


class Reporter:
    """Builds this node's reports; remembers the backend latency totals between them."""

    def __init__(self, ctx: NodeContext, local_groups: GroupIndex) -> None:
        self._ctx = ctx
        self._local_groups = local_groups
        self._seen = (0, 0.0)  # backend operations and their seconds at the last report
        self._latency_ms: float | None = None

    def current(self) -> NodeReport:
        """This node's report now, in one pass (the backend latency is the last
        interval's)."""
        figures = _Figures()
        for _ in self._walk(figures):
            pass
        return self._report(figures)

    async def survey(self) -> NodeReport:
        """This node's report now, gathered a slice per loop pass (see current)."""
        figures = _Figures()
        for _ in self._walk(figures):
            await asyncio.sleep(0)
        return self._report(figures)

    async def next(self) -> NodeReport:
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
        return await self.survey()

    def _walk(self, figures: _Figures) -> Iterator[None]:
        """Add up the outboxes, then keep the largest groups, pausing (yield) after each
        slice of max_concurrent_broadcast connections or groups."""
        slice_size = budget = self._ctx.config.max_concurrent_broadcast
        for shard in self._ctx.pool.shards():  # (lists as of the call)
            for conn in shard:
                queued = len(conn.outbox)
                figures.outbox_frames += queued
                if queued > figures.outbox_max_frames:
                    figures.outbox_max_frames = queued
                budget -= 1
                if budget <= 0:
                    budget = slice_size
                    yield
        largest = figures.largest
        for group, members in self._local_groups():
            count = len(members)  # (0 while a first member's subscribe is under way)
            if count and len(largest) < MAX_REPORTED_GROUPS:
                heapq.heappush(largest, (count, group))
            elif count and (count, group) > largest[0]:
                heapq.heapreplace(largest, (count, group))
            budget -= 1
            if budget <= 0:
                budget = slice_size
                yield

    def _report(self, figures: _Figures) -> NodeReport:
        ctx = self._ctx
        stats = ctx.stats
        ranked = sorted(figures.largest, key=lambda entry: (-entry[0], entry[1]))
        return NodeReport(
            ctx.node_id, ctx.phase.value, time.time(), connections=len(ctx.pool),
            messages_in=stats.messages_in, messages_out=stats.messages_out,
            broadcasts=stats.broadcasts, outbox_frames=figures.outbox_frames,
            outbox_max_frames=figures.outbox_max_frames,
            backend_latency_ms=self._latency_ms,
            groups={group: count for count, group in ranked})
