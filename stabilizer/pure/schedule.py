"""The heartbeat schedule (pure): when to ping which connection, and which ones missed their
deadline. The clock is an argument; services/liveness.py runs the one loop that acts on it.

No task or timer exists per connection. One item per connection names its next event: its
next ping or, while a ping is unanswered, its pong deadline if that comes first. Any inbound
frame counts as an answer and touches no item.

Items wait in two containers. A key pinged at t is next due at t + interval, after every
other key's next ping, so in the steady state items are scheduled in time order: those go to
the tail of a run queue (a deque, in (time, slot) order) at O(1). Only an item that would come
before the run queue's tail goes to a heap: a deadline shorter than the interval, a key tracked
just after a coalesced ping put another key's next ping past its own, keys caught up at one
time after a late wake-up. The next item is the smaller of the two heads, compared as (time,
slot): the order is exactly that of one heap holding every item.

The deadline runs from the *first* unanswered ping: with interval 30 and timeout 60 a silent
client is pinged at 30 and 60 and closed at 90. (fastapi-websocket-stabilizer closed it at the
next interval whatever the timeout.) Without pings (``custom`` heartbeat) a client must be
heard from at least every ``timeout`` seconds.

A forgotten key is unreachable from the schedule at once: items name a slot, not the
key, and a forgotten key's slot is emptied. Stale items are swept out when they outnumber the
live ones, from both containers.

Nothing per key is an object the cyclic collector walks: a key's times live in arrays of
floats at its slot, and an item is a pair of numbers (which the collector stops tracking).
With 10,000 connections an entry object and a heap tuple each were 20,000 more objects that
every full collection visited.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Hashable
from heapq import heapify, heappop, heappush
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
_MIN_SWEEP: Final = 64
_NONE: Final = math.inf  # no pong deadline outstanding
_UNSCHEDULED: Final = math.nan  # equal to no time: every item of the slot is stale


class HeartbeatSchedule(Generic[K]):
    """Each tracked key has a slot and one live item at its next event; an item whose
    time is not its slot's scheduled time, or whose slot was emptied, is stale and skipped.
    A slot is reused once emptied: an item left from its former key is stale unless it
    names the very time the new key is scheduled for, and then it is that key's event."""

    def __init__(self, interval: float, timeout: float, *, send_pings: bool = True) -> None:
        self.interval = interval
        self.timeout = timeout
        self.send_pings = send_pings
        # Pings due within this window are sent together, so one wake-up serves many.
        self.coalesce = min(0.05, interval / 50, timeout / 50)
        self._slots: dict[K, int] = {}
        self._keys: list[K | None] = []  # by slot (None: empty)
        self._free: list[int] = []
        self._last_seen = array("d")
        self._next_ping = array("d")
        self._deadline = array("d")  # _NONE while no ping is unanswered
        self._scheduled = array("d")  # the time of the slot's one live item
        self._run: deque[tuple[float, int]] = deque()  # in (time, slot) order
        self._heap: list[tuple[float, int]] = []  # items that came before the run's tail

    def __len__(self) -> int:
        return len(self._slots)

    def heap_size(self) -> int:
        """Items in the run queue and the heap, stale ones included (about one per key)."""
        return len(self._run) + len(self._heap)

    def _schedule(self, slot: int, when: float) -> bool:
        self._scheduled[slot] = when
        run, heap = self._run, self._heap
        earliest = (not run or when < run[0][0]) and (not heap or when < heap[0][0])
        item = (when, slot)
        if not run or item >= run[-1]:
            run.append(item)
        else:
            heappush(heap, item)
        return earliest

    def _next_event(self, slot: int) -> float:
        if not self.send_pings:
            return self._last_seen[slot] + self.timeout
        return min(self._deadline[slot], self._next_ping[slot])

    def _live(self, when: float, slot: int) -> bool:
        return self._keys[slot] is not None and self._scheduled[slot] == when

    def track(self, key: K, now: float) -> bool:
        """Start watching `key`; True when this moved the earliest wake-up forward."""
        self.forget(key)
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            self._last_seen[slot] = now
            self._next_ping[slot] = now + self.interval
            self._deadline[slot] = _NONE
        else:
            slot = len(self._keys)
            self._keys.append(key)
            self._last_seen.append(now)
            self._next_ping.append(now + self.interval)
            self._deadline.append(_NONE)
            self._scheduled.append(_UNSCHEDULED)
        self._slots[key] = slot
        return self._schedule(slot, self._next_event(slot))

    def forget(self, key: K) -> None:
        """Stop watching `key`; the schedule holds no reference to it afterwards."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self._empty(slot)
        if len(self._run) + len(self._heap) > max(_MIN_SWEEP, 2 * len(self._slots)):
            self._sweep()

    def _empty(self, slot: int) -> None:
        self._keys[slot] = None
        self._free.append(slot)

    def _sweep(self) -> None:
        self._run = deque(item for item in self._run if self._live(*item))
        self._heap = [item for item in self._heap if self._live(*item)]
        heapify(self._heap)

    def seen(self, key: K, now: float) -> None:
        """Record that `key` answered or sent something: it is alive as of `now`."""
        slot = self._slots.get(key)
        if slot is None:
            return
        self._last_seen[slot] = now
        if self.send_pings:
            self._deadline[slot] = _NONE

    def next_wake(self) -> float | None:
        """The loop-clock time of the earliest live item, or None when nothing is tracked."""
        run, heap = self._run, self._heap
        while run or heap:
            if run and not (heap and heap[0] < run[0]):
                if self._live(*run[0]):
                    return run[0][0]
                run.popleft()
            else:
                if self._live(*heap[0]):
                    return heap[0][0]
                heappop(heap)
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
        later: list[int] = []
        run, heap = self._run, self._heap
        keys, scheduled = self._keys, self._scheduled
        next_ping, deadline = self._next_ping, self._deadline
        send_pings = self.send_pings
        catch_up = now + self.interval / 2  # the earliest next ping after a late wake-up
        pong_by = now + self.timeout
        while True:  # the smaller head of the run queue and the heap, while it is due
            if run:
                item = run[0]
                if heap and heap[0] < item:
                    item = heap[0]
                    if item[0] > horizon:
                        break
                    heappop(heap)
                else:
                    if item[0] > horizon:
                        break
                    run.popleft()
            elif heap and heap[0][0] <= horizon:
                item = heappop(heap)
            else:
                break
            when, slot = item
            key = keys[slot]
            if key is None or scheduled[slot] != when:
                continue  # stale
            if (
                deadline[slot] <= now
                if send_pings
                else self._last_seen[slot] + self.timeout <= now
            ):
                expired.append(key)
                del self._slots[key]
                self._empty(slot)
                continue
            scheduled[slot] = _UNSCHEDULED  # until rescheduled below: another item of
            # this slot and time (left by the slot's former key) is stale
            if send_pings and next_ping[slot] <= horizon:
                to_ping.append(key)
                # keep the phase (no drift) unless the loop fell far behind
                ping_at = next_ping[slot] + self.interval
                next_ping[slot] = catch_up if catch_up > ping_at else ping_at
                if deadline[slot] == _NONE:
                    deadline[slot] = pong_by
            later.append(slot)
        # Rescheduled only now: an event still within the horizon would be popped again.
        for slot in later:  # as _schedule(slot, _next_event(slot)), inlined for speed
            if send_pings:
                when = deadline[slot]
                if next_ping[slot] < when:
                    when = next_ping[slot]
            else:
                when = self._last_seen[slot] + self.timeout
            scheduled[slot] = when
            item = (when, slot)
            if not run or item >= run[-1]:
                run.append(item)
            else:
                heappush(heap, item)
        return to_ping, expired
