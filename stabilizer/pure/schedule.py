"""The heartbeat schedule (pure): when to ping which connection, and which ones missed their
deadline. The clock is an argument; services/liveness.py runs the one loop that acts on it.

No task or timer exists per connection. One heap holds every connection's next event: its
next ping or, while a ping is unanswered, its pong deadline if that comes first. Any inbound
frame counts as an answer and touches no heap entry.

The deadline runs from the *first* unanswered ping: with interval 30 and timeout 60 a silent
client is pinged at 30 and 60 and closed at 90. (fastapi-websocket-stabilizer closed it at the
next interval whatever the timeout.) Without pings (``custom`` heartbeat) a client must be
heard from at least every ``timeout`` seconds.

A forgotten key is unreachable from the schedule at once: heap items hold an entry that
drops its key when forgotten, so a closed connection is never kept alive until its entry
would have come due. Stale items are swept out when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
_MIN_SWEEP: Final = 64


class _Entry(Generic[K]):
    __slots__ = ("deadline", "key", "last_seen", "next_ping", "scheduled")

    def __init__(self, key: K, now: float) -> None:
        self.key: K | None = key
        self.last_seen = now
        self.next_ping = 0.0
        self.deadline: float | None = None
        self.scheduled = 0.0  # the time of this entry's one live heap item


class HeartbeatSchedule(Generic[K]):
    """Each tracked key has one live heap item at its next event; an item whose time is not
    its entry's ``scheduled`` time, or whose entry was forgotten, is stale and skipped."""

    def __init__(self, interval: float, timeout: float, *, send_pings: bool = True) -> None:
        self.interval = interval
        self.timeout = timeout
        self.send_pings = send_pings
        # Pings due within this window are sent together, so one wake-up serves many.
        self.coalesce = min(0.05, interval / 50, timeout / 50)
        self._entries: dict[K, _Entry[K]] = {}
        self._heap: list[tuple[float, int, _Entry[K]]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def heap_size(self) -> int:
        """Heap items, stale ones included (about one per tracked key)."""
        return len(self._heap)

    def _schedule(self, entry: _Entry[K], when: float) -> bool:
        entry.scheduled = when
        earliest = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        return earliest

    def _next_event(self, entry: _Entry[K]) -> float:
        if not self.send_pings:
            return entry.last_seen + self.timeout
        if entry.deadline is not None and entry.deadline < entry.next_ping:
            return entry.deadline
        return entry.next_ping

    def track(self, key: K, now: float) -> bool:
        """Start watching `key`; True when this moved the earliest wake-up forward."""
        self.forget(key)
        entry = _Entry(key, now)
        self._entries[key] = entry
        entry.next_ping = now + self.interval
        return self._schedule(entry, self._next_event(entry))

    def forget(self, key: K) -> None:
        """Stop watching `key`; the schedule holds no reference to it afterwards."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        entry.key = None
        if len(self._heap) > max(_MIN_SWEEP, 2 * len(self._entries)):
            self._sweep()

    def _sweep(self) -> None:
        self._heap = [item for item in self._heap
                      if item[2].key is not None and item[2].scheduled == item[0]]
        heapq.heapify(self._heap)

    def seen(self, key: K, now: float) -> None:
        """Record that `key` answered or sent something: it is alive as of `now`."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.last_seen = now
        if self.send_pings:
            entry.deadline = None

    def next_wake(self) -> float | None:
        """The loop-clock time of the earliest live item, or None when nothing is tracked."""
        heap = self._heap
        while heap:
            when, _, entry = heap[0]
            if entry.key is not None and entry.scheduled == when:
                return when
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> tuple[list[K], list[K]]:
        """Pop what is due at `now`: (keys to ping now, keys whose deadline passed).

        Expired keys are forgotten; pinged keys get their next ping and, if none was
        outstanding, a pong deadline. Pings due within the coalescing window are sent now;
        deadlines are never brought forward.
        """
        horizon = now + self.coalesce
        to_ping: list[K] = []
        expired: list[K] = []
        later: list[_Entry[K]] = []
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            when, _, entry = heapq.heappop(heap)
            key = entry.key
            if key is None or entry.scheduled != when:
                continue  # stale
            if self._expired(entry, now):
                expired.append(key)
                del self._entries[key]
                entry.key = None
                continue
            if self.send_pings and entry.next_ping <= horizon:
                to_ping.append(key)
                # keep the phase (no drift) unless the loop fell far behind
                entry.next_ping = max(entry.next_ping + self.interval,
                                      now + self.interval / 2)
                if entry.deadline is None:
                    entry.deadline = now + self.timeout
            later.append(entry)
        for entry in later:
            self._schedule(entry, self._next_event(entry))
        return to_ping, expired

    def _expired(self, entry: _Entry[K], now: float) -> bool:
        if self.send_pings:
            return entry.deadline is not None and entry.deadline <= now
        return entry.last_seen + self.timeout <= now
