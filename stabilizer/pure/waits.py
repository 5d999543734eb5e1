"""The rule every public call's `timeout` follows: a finite number of seconds, 0 or more.

A timeout ends up as a deadline in the event loop's timer heap. NaN compares as neither
earlier nor later than any other deadline, so one NaN there breaks the heap's order and every
timer of the process (heartbeats, connect and close timeouts) fires late; infinity never
fires, and whatever waits on it is held for ever. Both are refused when the call is made.
"""

from __future__ import annotations

import math

from stabilizer.config_limits import MAX_SECONDS
from stabilizer.errors import ConfigError


def wait_seconds(name: str, value: object) -> float:
    """Return `value` as seconds to wait: 0 (do not wait) up to MAX_SECONDS (100 years).

    Raises:
        ConfigError: `value` is not a number (a bool is not), is NaN, infinite, negative or
            above MAX_SECONDS; the message names `name`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_SECONDS:
        raise ConfigError(f"{name} must be a finite number of seconds from 0 to "
                          f"{MAX_SECONDS:.0f} (100 years), got {value!r}")
    return seconds
