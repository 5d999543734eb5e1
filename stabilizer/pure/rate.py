"""The inbound rate limit (pure): a token bucket with the clock as an argument, and what a
connection's heartbeats and acknowledgements may send without spending its tokens
(docs/protocol.md section 3, "The inbound rate limit"):

- a pong answering a ping the server sent (one per ping: never more than were sent);
- one client heartbeat (a ``ping``, or a pong no ping asked for) per heartbeat_interval:
  the shipped clients probe a silent link with a ``ping``;
- an ``ack`` naming a token the connection awaits (Connection.take_ack says which).

Anything else of these kinds spends a token like a message.
"""

from __future__ import annotations

import math

from stabilizer.config import WebSocketConfig
from stabilizer.pure.text import retry_advice


class TokenBucket:
    """`capacity` messages, refilled at capacity/window per second; the pongs the client
    owes for the pings it was sent, and when its last free heartbeat came."""

    __slots__ = ("beat_at", "beat_interval", "capacity", "owed_pongs", "rate", "stamp",
                 "tokens")

    def __init__(self, capacity: int, window: float, beat_interval: float = math.inf) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = float(capacity)
        self.stamp: float | None = None
        self.owed_pongs = 0
        self.beat_interval = beat_interval
        self.beat_at = -math.inf

    @classmethod
    def from_config(cls, config: WebSocketConfig) -> TokenBucket | None:
        """A bucket for the configured limit, or None when there is no limit."""
        if config.rate_limit_messages is None:
            return None
        return cls(config.rate_limit_messages, config.rate_limit_window,
                   config.heartbeat_interval)

    def take(self, now: float) -> bool:
        """Spend one token at time `now`; False when the bucket is empty."""
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def pinged(self) -> None:
        """The server sent the client a ping: the pong answering it is free."""
        self.owed_pongs += 1

    def take_pong(self, now: float) -> bool:
        """A pong at time `now`: free when it answers a ping (or is the interval's free
        heartbeat), else one token; False when over the limit."""
        if self.owed_pongs:
            self.owed_pongs -= 1
            return True
        return self.take_beat(now)

    def take_beat(self, now: float) -> bool:
        """A heartbeat the client sent of its own (a ``ping``, or a pong no ping asked for)
        at time `now`: free once per beat_interval, else one token; False when over the
        limit."""
        if now - self.beat_at >= self.beat_interval:
            self.beat_at = now
            return True
        return self.take(now)


def over_rate_reason(config: WebSocketConfig) -> str:
    """The close reason of a connection over the rate limit with action close: come back
    after a window at least (retry advice)."""
    return retry_advice(config.retry_jitter, floor=config.rate_limit_window)
