"""HeartbeatSchedule against a reference model: the heap-only schedule it replaced.

The schedule keeps in-order items in a run queue and only out-of-order ones in a heap; these
tests drive it and the plain one-heap algorithm with the same operations and require the same
answers from every call, including the mixed cases: deadlines shorter than the interval, late
wake-ups, keys tracked with earlier times, forget and slot reuse, sweeps.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from array import array
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from stabilizer.pure.schedule import HeartbeatSchedule

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "stabilizer-unit-hypothesis")
MODEL = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
_NONE = math.inf
_UNSCHEDULED = math.nan


class HeapOnlySchedule:
    """The reference: the schedule's algorithm with one heap holding every item."""

    def __init__(self, interval: float, timeout: float, *, send_pings: bool = True) -> None:
        self.interval, self.timeout, self.send_pings = interval, timeout, send_pings
        self.coalesce = min(0.05, interval / 50, timeout / 50)
        self.slots: dict[int, int] = {}
        self.keys: list[int | None] = []
        self.free: list[int] = []
        self.last_seen, self.next_ping = array("d"), array("d")
        self.deadline, self.scheduled = array("d"), array("d")
        self.heap: list[tuple[float, int]] = []

    def schedule(self, slot: int) -> bool:
        if self.send_pings:
            when = min(self.deadline[slot], self.next_ping[slot])
        else:
            when = self.last_seen[slot] + self.timeout
        self.scheduled[slot] = when
        earliest = not self.heap or when < self.heap[0][0]
        heapq.heappush(self.heap, (when, slot))
        return earliest

    def live(self, when: float, slot: int) -> bool:
        return self.keys[slot] is not None and self.scheduled[slot] == when

    def track(self, key: int, now: float) -> bool:
        self.forget(key)
        if self.free:
            slot = self.free.pop()
            self.keys[slot] = key
        else:
            slot = len(self.keys)
            self.keys.append(key)
            for times in (self.last_seen, self.next_ping, self.deadline, self.scheduled):
                times.append(_UNSCHEDULED)
        self.last_seen[slot], self.next_ping[slot] = now, now + self.interval
        self.deadline[slot] = _NONE
        self.slots[key] = slot
        return self.schedule(slot)

    def forget(self, key: int) -> None:
        slot = self.slots.pop(key, None)
        if slot is None:
            return
        self.keys[slot] = None
        self.free.append(slot)
        if len(self.heap) > max(64, 2 * len(self.slots)):
            self.heap = [item for item in self.heap if self.live(*item)]
            heapq.heapify(self.heap)

    def seen(self, key: int, now: float) -> None:
        slot = self.slots.get(key)
        if slot is not None:
            self.last_seen[slot] = now
            if self.send_pings:
                self.deadline[slot] = _NONE

    def next_wake(self) -> float | None:
        while self.heap:
            if self.live(*self.heap[0]):
                return self.heap[0][0]
            heapq.heappop(self.heap)
        return None

    def due(self, now: float) -> tuple[list[int], list[int]]:
        horizon = now + self.coalesce
        to_ping: list[int] = []
        expired: list[int] = []
        later: list[int] = []
        while self.heap and self.heap[0][0] <= horizon:
            when, slot = heapq.heappop(self.heap)
            key = self.keys[slot]
            if key is None or self.scheduled[slot] != when:
                continue
            if self.send_pings:
                gone = self.deadline[slot] <= now
            else:
                gone = self.last_seen[slot] + self.timeout <= now
            if gone:
                expired.append(key)
                del self.slots[key]
                self.keys[slot] = None
                self.free.append(slot)
                continue
            self.scheduled[slot] = _UNSCHEDULED
            if self.send_pings and self.next_ping[slot] <= horizon:
                to_ping.append(key)
                self.next_ping[slot] = max(
                    self.next_ping[slot] + self.interval, now + self.interval / 2
                )
                if self.deadline[slot] == _NONE:
                    self.deadline[slot] = now + self.timeout
            later.append(slot)
        for slot in later:
            self.schedule(slot)
        return to_ping, expired


# Steps of 1/64 s and 1/256 s are held exactly by floats and fall within the coalescing
# window; equal times are frequent, so the order of items often falls to the slot.
steps = st.one_of(
    st.just(0.0),
    st.integers(1, 24).map(lambda n: n / 8),
    st.integers(1, 8).map(lambda n: n / 64),
    st.integers(1, 4).map(lambda n: n / 256),
)
keys = st.integers(0, 11)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("track"), keys, steps),
        st.tuples(st.just("seen"), keys, steps),
        st.tuples(st.just("forget"), keys, steps),
        st.tuples(st.just("wake"), st.just(0), steps),  # due at next_wake (+ lateness)
        st.tuples(st.just("due"), st.just(0), steps),  # due at an arbitrary later time
        st.tuples(st.just("pong"), st.just(0), steps),  # the keys pinged last answer
    ),
    min_size=40,
    max_size=160,
)
periods = st.sampled_from([(1.0, 2.0), (1.0, 0.5), (2.0, 2.0), (1.0, 0.25), (3.0, 5.0)])


def run_both(
    interval: float, timeout: float, send_pings: bool, ops: list[tuple[str, int, float]]
) -> None:
    schedule: HeartbeatSchedule[int] = HeartbeatSchedule(
        interval, timeout, send_pings=send_pings
    )
    model = HeapOnlySchedule(interval, timeout, send_pings=send_pings)
    now = 0.0
    pinged: list[int] = []
    for step, (op, key, delta) in enumerate(ops):
        where = f"step {step}: {op} {key} {delta}"
        if op == "forget":
            schedule.forget(key)
            model.forget(key)
        elif op in ("wake", "due"):
            wake = model.next_wake()
            now = max(now, wake) + delta if op == "wake" and wake is not None else now + delta
            answer = schedule.due(now)
            assert answer == model.due(now), where
            pinged = answer[0]
        else:
            now += delta
            if op == "track":
                assert schedule.track(key, now) == model.track(key, now), where
            for seen in [key] if op == "seen" else pinged if op == "pong" else []:
                schedule.seen(seen, now)
                model.seen(seen, now)
        assert schedule.next_wake() == model.next_wake(), where
        assert schedule.heap_size() == len(model.heap), where
        assert len(schedule) == len(model.slots), where


@MODEL
@given(periods, st.booleans(), operations)
def test_random_operations_match_the_heap_only_schedule(
    period: tuple[float, float], send_pings: bool, ops: list[tuple[str, int, float]]
) -> None:
    run_both(*period, send_pings, ops)


def test_track_reports_an_earlier_wake_only_before_both_heads() -> None:
    """b's coalesced ping puts its next item past c's, so c waits in the heap; once a's
    stale item is dropped the run queue's head is later than d's time, the heap's is not."""
    ops = [("track", 0, 0.0), ("track", 1, 1 / 64), ("wake", 0, 0.0)]  # a, b pinged at 1.0
    ops += [("track", 2, 0.0), ("forget", 0, 0.0), ("track", 3, 0.0)]  # c, then d at 2.0
    run_both(1.0, 2.0, True, ops)


def test_short_deadlines_and_late_wakes_match_the_heap_only_schedule() -> None:
    """Deadlines before the interval, keys tracked between pings, a late wake-up and a
    slot reused: items in both containers, and the order is still the one heap's."""
    ops = [("track", key, 1 / 256) for key in range(6)]
    ops += [("wake", 0, 0.0), ("seen", 1, 0.0), ("seen", 3, 0.0), ("forget", 2, 0.0)]
    ops += [("track", 7, 1 / 64), ("track", 2, 0.0), ("wake", 0, 0.0), ("wake", 0, 1.5)]
    ops += [("pong", 0, 0.0), ("track", 0, 0.0), ("wake", 0, 0.0), ("due", 0, 3.0)]
    ops += [("wake", 0, 0.0), ("pong", 0, 0.0)] * 8
    run_both(1.0, 0.25, True, ops)
    run_both(1.0, 0.25, False, ops)


def test_a_late_wake_up_for_many_keys_matches_the_heap_only_schedule() -> None:
    """Keys re-tracked into reused slots are due in another order than their slots', so
    catch-up after a late wake puts items out of order; stale items are then swept from
    both containers."""
    ops = [("track", key, 1 / 64) for key in range(100)]
    ops += [("forget", key, 0.0) for key in range(0, 100, 2)]
    ops += [("track", key, 1 / 64) for key in range(0, 100, 2)]
    ops += [("due", 0, 5.0), ("pong", 0, 0.0), ("track", 100, 0.0)]
    ops += [("forget", key, 0.0) for key in range(100) if key % 3]
    ops += [("wake", 0, 0.0), ("pong", 0, 0.0), ("forget", 3, 0.0), ("wake", 0, 0.25)] * 6
    run_both(1.0, 2.0, True, ops)
