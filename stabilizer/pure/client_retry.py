"""The client's retry timing (pure): the backoff policy, the server's retry advice, and
what an ended attempt means for the next one (client/connection.py acts on it)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

from stabilizer.config import CloseCode
from stabilizer.errors import ConfigError
from stabilizer.pure.text import backoff_delay

ADVISED_CODES: Final = frozenset({CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER,
                                  CloseCode.USER_LIMIT})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, optionally bounded in attempts.

    ``max_attempts`` counts attempts in a row that fail to open (None: never give up), and
    bounds the same way the "try later" answers in a row to a subscribe the client makes
    again after a reconnect (then the channel is given up as refused: `resubscribe_delay`);
    ``max_advice`` bounds the delay a server may ask for in a 1012/1013 close reason; a
    connection closed before ``stable_after`` seconds counts as a failure for the backoff,
    so a server that fails right after the handshake is not hammered (not one the client
    closed itself to resume because its application fell behind: see `plan_retry`).
    """

    base: float = 0.25
    cap: float = 30.0
    max_attempts: int | None = None
    max_advice: float = 60.0
    stable_after: float = 5.0

    def __post_init__(self) -> None:
        for name in ("base", "cap", "max_advice", "stable_after"):
            value = getattr(self, name)
            lowest = 0.0 if name == "stable_after" else math.ulp(0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    lowest <= value < math.inf):
                raise ConfigError(f"RetryPolicy.{name} must be a positive number, got {value!r}")
        if self.max_attempts is not None and (
                isinstance(self.max_attempts, bool) or self.max_attempts < 1):
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1 or None, "
                              f"got {self.max_attempts!r}")

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after `failures` failed attempts in a row."""
        return backoff_delay(failures, base=self.base, cap=self.cap)

def retry_advice_seconds(reason: str, *, limit: float = 60.0) -> float | None:
    """Read ``{"retry_ms": N}`` from a close reason as seconds (at most `limit`).

    None for free text, another JSON value, or a negative, non-finite or non-numeric N.
    """
    if not reason.startswith("{"):
        return None
    try:
        value = json.loads(reason)
    except ValueError:
        return None
    retry_ms = value.get("retry_ms") if isinstance(value, dict) else None
    if isinstance(retry_ms, bool) or not isinstance(retry_ms, int | float):
        return None
    if not math.isfinite(retry_ms) or retry_ms < 0:
        return None
    return min(retry_ms / 1000, limit)

def retry_delay(policy: RetryPolicy, failures: int, code: int, reason: str) -> float:
    """Seconds before the next attempt: the server's advice for 1012/1013/4004, else
    backoff. Advice is followed alone once; if the advised attempt fails too, the backoff
    goes on under it (the longer of the two), so advice of 0 never makes a tight loop."""
    if code in ADVISED_CODES:
        advice = retry_advice_seconds(reason, limit=policy.max_advice)
        if advice is not None:
            return advice if failures <= 1 else max(advice, policy.delay(failures))
    return policy.delay(failures)


def plan_retry(policy: RetryPolicy, failures: int, *, code: int, reason: str,
               stable: bool = False, shed: bool = False, admitted: int = 0
               ) -> tuple[int, float]:
    """The failed attempts in a row, counting the one that just ended, and the seconds
    before the next attempt.

    A connection that stayed open ``stable_after`` seconds resets the count. One the client
    shed (closed itself with 1013 because its application fell behind, client/inbox.py)
    after its inbox `admitted` messages is no failure, however short its life: the count
    stays and the client resumes at once (the application paces these: each shed waits
    until it drained the inbox to half). A shed that admitted nothing is a failure like any
    other and backs off, so a server that keeps sending only what the inbox turns away is
    not reconnected to in a loop.
    """
    if shed and admitted > 0:
        return (0 if stable else failures), 0.0
    failures = 0 if stable else failures + 1
    return failures, retry_delay(policy, failures, code, reason)


#: Reply codes that say "try later" (docs/protocol.md 6.5, 6.6): a subscribe the client made
#: again by itself after a reconnect and got one of them changed nothing, so it is asked
#: again after a backoff (``disconnected``, the socket's end, ends that round instead).
TRY_LATER_CODES: Final = frozenset({"unavailable", "overloaded", "rate_limited", "timeout"})


def resubscribe_delay(policy: RetryPolicy, failures: int) -> float | None:
    """Seconds before asking again for the channels whose automatic subscribe got a "try
    later" answer `failures` times in a row; None once that is ``max_attempts`` answers
    (the client then gives them up as refused, with the last code)."""
    if policy.max_attempts is not None and failures >= policy.max_attempts:
        return None
    return policy.delay(failures)
