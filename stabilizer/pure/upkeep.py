"""The maintenance schedule (pure): when the backend upkeep runs and when the memory check
does, each on its own period. The clock is an argument; services/maintenance.py runs the one
loop that acts on it.

The upkeep (keepalive, the node's report, the session sweep) is due at once, then every
``node_ttl / 3`` after the last one ended, or sooner after a failure (a backoff, never
longer than the period) or when the loop hurries it (a subscription back after a loss: the
settle that follows must not wait for the period). The memory check is due every
``memory_check_interval``. A loop that woke for one does not run the other: a memory check
every 50 ms leaves the upkeep at its own pace (each upkeep walks every local connection for
the report).
"""

from __future__ import annotations

from typing import Final

#: The shortest wait before an upkeep that failed runs again (a backoff may draw 0).
RETRY_FLOOR: Final = 0.01


class UpkeepSchedule:
    """The next time of each of the two jobs; `due` says which to run now."""

    def __init__(self, upkeep_every: float, check_every: float, now: float) -> None:
        self.upkeep_every = upkeep_every
        self.check_every = check_every
        self.next_upkeep = now  # the first one runs at start
        self.next_check = now + check_every

    def due(self, now: float) -> tuple[bool, bool]:
        """(the upkeep is due, the memory check is due) at `now`."""
        return now >= self.next_upkeep, now >= self.next_check

    def upkept(self, now: float, retry_in: float | None = None) -> None:
        """An upkeep ended at `now`; `retry_in` is the backoff after one that failed."""
        wait = self.upkeep_every
        if retry_in is not None:
            wait = min(wait, max(RETRY_FLOOR, retry_in))
        self.next_upkeep = now + wait

    def hurry(self, now: float) -> None:
        """The upkeep is due at `now`, whenever it was due before."""
        self.next_upkeep = min(self.next_upkeep, now)

    def checked(self, now: float) -> None:
        """A memory check ran at `now`."""
        self.next_check = now + self.check_every

    def next_wake(self) -> float:
        """The clock time the earlier of the two jobs is due."""
        return min(self.next_upkeep, self.next_check)
