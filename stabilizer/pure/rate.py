"""The inbound rate limit (pure): a token bucket with the clock as an argument."""

from __future__ import annotations

from stabilizer.config import WebSocketConfig


class TokenBucket:
    """`capacity` messages, refilled at capacity/window per second."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = float(capacity)
        self.stamp: float | None = None

    @classmethod
    def from_config(cls, config: WebSocketConfig) -> TokenBucket | None:
        """A bucket for the configured limit, or None when there is no limit."""
        if config.rate_limit_messages is None:
            return None
        return cls(config.rate_limit_messages, config.rate_limit_window)

    def take(self, now: float) -> bool:
        """Spend one token at time `now`; False when the bucket is empty."""
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
