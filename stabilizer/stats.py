"""Counters a node keeps about itself (cheap integers; exported by /stats and /metrics)."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field
from typing import Final

#: Upper bounds (seconds) of latency buckets, Prometheus-style; +Inf is implied.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5)


class Histogram:
    """A fixed-bucket latency histogram: observe() is a bisect and two additions."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last."""
        running = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class BackendStats:
    """What the backend's operations cost and how often they failed."""

    latency: dict[str, Histogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def observe(self, operation: str, seconds: float, ok: bool) -> None:
        """Record one backend operation."""
        histogram = self.latency.get(operation)
        if histogram is None:
            histogram = self.latency[operation] = Histogram()
        histogram.observe(seconds)
        if not ok:
            self.errors[operation] = self.errors.get(operation, 0) + 1


@dataclass(slots=True)
class NodeStats:
    """Monotonic counters since the manager was created."""

    connects: int = 0
    disconnects: int = 0
    replaced: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    broadcasts: int = 0
    overflow_closes: int = 0
    oversize_closes: int = 0
    heartbeat_timeouts: int = 0
    pings_sent: int = 0
    pongs: int = 0
    memory_evictions: int = 0
    tokens_issued: int = 0
    resumed_sessions: int = 0
    refused_connections: int = 0
    wire_errors: int = 0
    stream_gaps: int = 0
    gaps_filled: int = 0
    rate_limited: int = 0
    backend_reconnects: int = 0
    rpc_calls: int = 0
    rpc_failures: int = 0  # calls answered with an error

    fanout_seconds: Histogram = field(default_factory=Histogram)

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), int)}
