"""Heartbeat: deadline bookkeeping (pure) and the one loop per node that acts on it.

No task or timer exists per connection. One heap holds every connection's next ping time and,
while a ping is unanswered, its pong deadline; the loop sleeps until the earliest entry,
pings every connection that is due in one batch (one serialized frame), and reports the
connections whose deadline passed. Any inbound frame counts as an answer.

The deadline runs from the *first* unanswered ping: with interval 30 and timeout 60 a silent
client is pinged at 30 and 60 and closed at 90. (fastapi-websocket-stabilizer closed it at the
next interval whatever the timeout.) In ``custom`` mode no ping is sent and a client must be
heard from at least every ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
_IDLE_WAKE: Final = 3600.0


class _Entry:
    __slots__ = ("deadline", "last_seen", "next_ping", "scheduled")

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.next_ping = 0.0
        self.deadline: float | None = None
        self.scheduled = 0.0  # the time of this key's one live heap entry


class HeartbeatSchedule(Generic[K]):
    """When to ping which connection, and which ones missed their deadline. Pure.

    Each key has one live heap entry, at its next event (its next ping, or its pong
    deadline if that comes first); an entry whose time is not the key's ``scheduled`` time
    is stale and skipped. A pong does not touch the heap at all.
    """

    def __init__(self, interval: float, timeout: float, *, send_pings: bool = True) -> None:
        self.interval = interval
        self.timeout = timeout
        self.send_pings = send_pings
        # Pings due within this window are sent together, so one wake-up serves many.
        self.coalesce = min(0.05, interval / 50, timeout / 50)
        self._entries: dict[K, _Entry] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def heap_size(self) -> int:
        """Heap entries, stale ones included (about one per tracked key)."""
        return len(self._heap)

    def _schedule(self, key: K, entry: _Entry, when: float) -> bool:
        entry.scheduled = when
        earliest = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, next(self._seq), key))
        return earliest

    def _next_event(self, entry: _Entry) -> float:
        if not self.send_pings:
            return entry.last_seen + self.timeout
        if entry.deadline is not None and entry.deadline < entry.next_ping:
            return entry.deadline
        return entry.next_ping

    def track(self, key: K, now: float) -> bool:
        """Start watching `key`; True when this moved the earliest wake-up forward."""
        entry = _Entry(now)
        self._entries[key] = entry
        entry.next_ping = now + self.interval
        return self._schedule(key, entry, self._next_event(entry))

    def forget(self, key: K) -> None:
        """Stop watching `key` (its heap entry is dropped lazily)."""
        self._entries.pop(key, None)

    def seen(self, key: K, now: float) -> None:
        """Record that `key` answered or sent something: it is alive as of `now`."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.last_seen = now
        if self.send_pings:
            entry.deadline = None

    def next_wake(self) -> float | None:
        """The loop-clock time of the earliest entry, or None when nothing is tracked."""
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry.scheduled == when:
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
        later: list[tuple[K, _Entry]] = []
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            when, _, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != when:
                continue  # stale
            if self._expired(entry, now):
                expired.append(key)
                del self._entries[key]
                continue
            if self.send_pings and entry.next_ping <= horizon:
                to_ping.append(key)
                # keep the phase (no drift) unless the loop fell far behind
                entry.next_ping = max(entry.next_ping + self.interval,
                                      now + self.interval / 2)
                if entry.deadline is None:
                    entry.deadline = now + self.timeout
            later.append((key, entry))
        for key, entry in later:
            self._schedule(key, entry, self._next_event(entry))
        return to_ping, expired

    def _expired(self, entry: _Entry, now: float) -> bool:
        if self.send_pings:
            return entry.deadline is not None and entry.deadline <= now
        return entry.last_seen + self.timeout <= now


class Heartbeat(Generic[K]):
    """The loop that sleeps until the schedule's next entry and acts on what is due."""

    def __init__(
        self,
        schedule: HeartbeatSchedule[K],
        on_ping: Callable[[list[K]], Awaitable[None]],
        on_expire: Callable[[list[K]], Awaitable[None]],
    ) -> None:
        self.schedule = schedule
        self._on_ping = on_ping
        self._on_expire = on_expire
        self._wakeup = asyncio.Event()

    def track(self, key: K, now: float) -> None:
        """Watch a new connection, waking the loop if it is now the earliest."""
        if self.schedule.track(key, now):
            self._wakeup.set()

    async def run(self) -> None:
        """Ping and expire connections until cancelled; survives errors in the callbacks."""
        loop = asyncio.get_running_loop()
        while True:
            wake = self.schedule.next_wake()
            delay = _IDLE_WAKE if wake is None else wake - loop.time()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                continue
            to_ping, expired = self.schedule.due(loop.time())
            try:
                if expired:
                    await self._on_expire(expired)
                if to_ping:
                    await self._on_ping(to_ping)
            except Exception:
                logger.exception("heartbeat callback failed; the loop goes on")
