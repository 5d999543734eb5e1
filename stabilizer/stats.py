"""Counters a node keeps about itself (cheap integers; exported by /stats and /metrics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return dataclasses.asdict(self)
