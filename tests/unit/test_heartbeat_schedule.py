"""HeartbeatSchedule: when each connection is pinged and when it expires. The clock is `now`."""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterable

import pytest

from stabilizer.pure.schedule import HeartbeatSchedule

Event = tuple[float, str, Hashable]

# A step shorter than the schedule's coalescing window (0.05 s) that floats hold exactly.
NUDGE = 1 / 32


def run_until(
    schedule: HeartbeatSchedule[str], end: float, *, answering: Iterable[str] = ()
) -> list[Event]:
    """Drive `schedule` as the heartbeat loop does: wake at next_wake, call due, log events.

    Keys in `answering` pong at once whenever they are pinged.
    """
    answers = set(answering)
    events: list[Event] = []
    for _ in range(10_000):
        wake = schedule.next_wake()
        if wake is None or wake > end:
            return events
        pinged, expired = schedule.due(wake)
        events += [(wake, "expire", key) for key in sorted(expired)]
        events += [(wake, "ping", key) for key in sorted(pinged)]
        for key in answers.intersection(pinged):
            schedule.seen(key, wake)
    raise AssertionError("the schedule never got past `end`")


# ----------------------------------------------------------------------------- ping mode


def test_silent_client_is_pinged_at_30_and_60_and_expired_at_90() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert run_until(schedule, 1000.0) == [
        (30.0, "ping", "a"), (60.0, "ping", "a"), (90.0, "expire", "a"),
    ]
    assert len(schedule) == 0
    assert schedule.next_wake() is None


def test_silent_client_step_by_step_with_explicit_times() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(29.9) == ([], [])
    assert schedule.due(30.0) == (["a"], [])
    assert schedule.due(59.0) == ([], [])
    assert schedule.due(60.0) == (["a"], [])
    assert schedule.due(89.9) == ([], [])  # the seed closed it at 60: timeout was ignored
    assert schedule.due(90.0) == ([], ["a"])
    assert schedule.due(200.0) == ([], [])


def test_timeout_shorter_than_interval_expires_at_ping_plus_timeout() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 10.0)
    schedule.track("a", now=5.0)
    assert run_until(schedule, 1000.0) == [(35.0, "ping", "a"), (45.0, "expire", "a")]


def test_timeout_equal_to_interval_expires_at_the_second_ping_time() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 30.0)
    schedule.track("a", now=0.0)
    assert run_until(schedule, 1000.0) == [(30.0, "ping", "a"), (60.0, "expire", "a")]


def test_a_pong_clears_the_deadline() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(30.0) == (["a"], [])
    schedule.seen("a", now=31.0)
    assert schedule.due(90.0) == (["a"], [])  # would have expired at 90 without the pong
    assert len(schedule) == 1


def test_a_client_that_always_answers_never_expires() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    events = run_until(schedule, 3000.0, answering={"a"})
    assert [kind for _, kind, _ in events] == ["ping"] * 100
    assert [when for when, _, _ in events] == [30.0 * n for n in range(1, 101)]


def test_client_that_stops_answering_expires_timeout_after_the_first_unanswered_ping() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(30.0) == (["a"], [])
    schedule.seen("a", now=30.5)
    # pinged at 60 (unanswered from here on) and 90; closed at 60 + 60
    assert run_until(schedule, 1000.0) == [
        (60.0, "ping", "a"), (90.0, "ping", "a"), (120.0, "expire", "a"),
    ]


def test_only_the_silent_client_expires() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("quiet", now=0.0)
    schedule.track("chatty", now=0.0)
    events = run_until(schedule, 150.0, answering={"chatty"})
    assert [event for event in events if event[1] == "expire"] == [(90.0, "expire", "quiet")]
    assert (150.0, "ping", "chatty") in events
    assert len(schedule) == 1


def test_seen_for_an_unknown_key_is_ignored() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.seen("ghost", now=5.0)
    assert len(schedule) == 0
    assert schedule.next_wake() is None


def test_a_late_wake_up_pings_without_drifting_the_phase() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(30.5) == (["a"], [])
    assert schedule.next_wake() == 60.0


def test_a_client_is_never_expired_before_it_was_pinged() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(1000.0) == (["a"], [])  # the loop fell far behind
    # next ping half an interval later; expiry a timeout after that first ping
    assert run_until(schedule, 2000.0) == [
        (1015.0, "ping", "a"), (1045.0, "ping", "a"), (1060.0, "expire", "a"),
    ]


def test_silent_client_expires_on_time_when_another_clients_ping_coalesces_its_entries() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    schedule.track("b", now=30.0 - NUDGE)  # b's pings fall just before a's
    events = run_until(schedule, 200.0)
    expiry = next(when for when, kind, key in events if kind == "expire" and key == "a")
    assert expiry <= 90.0 + schedule.coalesce


# ----------------------------------------------------------------------------- forget


def test_forget_drops_a_key() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    schedule.track("b", now=0.0)
    schedule.forget("a")
    assert len(schedule) == 1
    assert run_until(schedule, 100.0) == [
        (30.0, "ping", "b"), (60.0, "ping", "b"), (90.0, "expire", "b"),
    ]


def test_forget_after_a_ping_prevents_the_expiry() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    assert schedule.due(30.0) == (["a"], [])
    schedule.forget("a")
    assert schedule.next_wake() is None
    assert schedule.due(1000.0) == ([], [])


def test_forget_of_an_unknown_key_is_ignored() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.forget("ghost")
    assert len(schedule) == 0


# ----------------------------------------------------------------------------- custom mode


def test_custom_mode_sends_no_pings_and_expires_after_timeout() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0, send_pings=False)
    schedule.track("a", now=0.0)
    assert schedule.next_wake() == 60.0
    assert schedule.due(59.9) == ([], [])
    assert schedule.due(60.0) == ([], ["a"])


def test_custom_mode_traffic_moves_the_deadline() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0, send_pings=False)
    schedule.track("a", now=0.0)
    schedule.seen("a", now=50.0)
    schedule.seen("a", now=100.0)
    assert run_until(schedule, 1000.0) == [(160.0, "expire", "a")]


def test_custom_mode_client_with_steady_traffic_stays() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0, send_pings=False)
    schedule.track("a", now=0.0)
    for now in range(10, 1000, 10):
        schedule.seen("a", now=float(now))
        assert schedule.due(float(now)) == ([], [])
    assert len(schedule) == 1


def test_custom_mode_timeout_may_exceed_interval() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(5.0, 120.0, send_pings=False)
    schedule.track("a", now=0.0)
    assert run_until(schedule, 1000.0) == [(120.0, "expire", "a")]


class SpinGuard:
    """A key that fails the test when hashed absurdly often, i.e. when due() loops forever."""

    def __init__(self, name: str, budget: int = 10_000) -> None:
        self.name = name
        self.budget = budget

    def __hash__(self) -> int:
        self.budget -= 1
        if self.budget < 0:
            raise AssertionError(f"due() keeps revisiting {self.name}: it never returns")
        return hash(self.name)

    def __repr__(self) -> str:
        return self.name


def test_custom_mode_deadline_just_after_now_does_not_hang_due() -> None:
    schedule: HeartbeatSchedule[SpinGuard] = HeartbeatSchedule(30.0, 60.0, send_pings=False)
    key = SpinGuard("a")
    schedule.track(key, now=0.0)
    schedule.seen(key, now=NUDGE)  # the client spoke right after connecting
    first_pings, first_expired = schedule.due(60.0)
    later_pings, later_expired = schedule.due(60.0 + NUDGE)
    assert first_pings == later_pings == []
    assert first_expired + later_expired == [key]


def test_custom_mode_neighbouring_deadlines_do_not_hang_due() -> None:
    schedule: HeartbeatSchedule[SpinGuard] = HeartbeatSchedule(30.0, 60.0, send_pings=False)
    first, second = SpinGuard("first"), SpinGuard("second")
    schedule.track(first, now=0.0)
    schedule.track(second, now=NUDGE)
    expired = schedule.due(60.0)[1]
    assert first in expired
    expired += schedule.due(60.0 + NUDGE)[1]
    assert sorted(expired, key=repr) == [first, second]


# ----------------------------------------------------------------------------- batching


def test_many_keys_due_at_once_come_back_in_one_call() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    keys = [f"c{n}" for n in range(1000)]
    for key in keys:
        schedule.track(key, now=0.0)
    pinged, expired = schedule.due(30.0)
    assert sorted(pinged) == sorted(keys)
    assert expired == []
    assert schedule.due(60.0)[0] != []
    pinged, expired = schedule.due(90.0)
    assert sorted(expired) == sorted(keys)
    assert len(schedule) == 0


def test_pings_due_within_the_coalescing_window_are_sent_together() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    schedule.track("b", now=NUDGE)
    schedule.track("c", now=1.0)
    assert sorted(schedule.due(30.0)[0]) == ["a", "b"]
    assert schedule.next_wake() == 31.0


def test_coalescing_window_is_small_for_small_intervals() -> None:
    assert HeartbeatSchedule(30.0, 60.0).coalesce == 0.05
    assert HeartbeatSchedule(0.5, 60.0).coalesce == pytest.approx(0.01)
    assert HeartbeatSchedule(30.0, 0.1).coalesce == pytest.approx(0.002)


# ----------------------------------------------------------------------------- next_wake


def test_next_wake_is_none_when_nothing_is_tracked() -> None:
    assert HeartbeatSchedule(30.0, 60.0).next_wake() is None


def test_next_wake_is_the_first_ping_then_the_next_ping() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=10.0)
    assert schedule.next_wake() == 40.0
    schedule.due(40.0)
    assert schedule.next_wake() == 70.0


def test_next_wake_is_the_deadline_when_it_comes_before_the_next_ping() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 10.0)
    schedule.track("a", now=0.0)
    schedule.due(30.0)
    assert schedule.next_wake() == 40.0


def test_next_wake_skips_forgotten_keys() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("early", now=0.0)
    schedule.track("late", now=20.0)
    schedule.forget("early")
    assert schedule.next_wake() == 50.0


def test_track_tells_whether_the_earliest_wake_moved_forward() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    assert schedule.track("a", now=10.0) is True
    assert schedule.track("b", now=20.0) is False
    assert schedule.track("c", now=5.0) is True
    assert schedule.next_wake() == 35.0


def test_answered_pings_leave_one_heap_entry_per_connection() -> None:
    """A pong must not leave a stale deadline entry behind for the whole timeout: at 10k
    connections, 11 entries each made the heap the heartbeat's main cost."""
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(1.0, 10.0)
    keys = [f"c{i}" for i in range(100)]
    for key in keys:
        schedule.track(key, now=0.0)
    now = 0.0
    for _ in range(30):  # 30 rounds of ping + immediate pong
        now += 1.0
        pinged, expired = schedule.due(now)
        assert expired == []
        assert sorted(pinged) == sorted(keys)
        for key in pinged:
            schedule.seen(key, now)
    assert schedule.heap_size() <= len(keys)


def test_a_short_timeout_still_expires_on_time_with_one_entry_per_key() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(10.0, 2.0)
    schedule.track("quiet", now=0.0)
    schedule.track("polite", now=0.0)
    assert sorted(schedule.due(10.0)[0]) == ["polite", "quiet"]
    schedule.seen("polite", 10.5)
    assert schedule.next_wake() == 12.0
    assert schedule.due(12.0) == ([], ["quiet"])
    assert schedule.next_wake() == 20.0
    assert schedule.heap_size() == 1


def test_a_slot_taken_over_by_another_key_has_one_live_item() -> None:
    """A forgotten key's slot goes to the next key tracked; the former key's heap item may
    name the very time the new key is due: that key is pinged once, and one item stays."""
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(30.0, 60.0)
    schedule.track("a", now=0.0)
    schedule.forget("a")
    schedule.track("b", now=0.0)  # due at 30, as "a" was
    assert schedule.due(30.0) == (["b"], [])
    assert schedule.heap_size() == 1
    assert schedule.next_wake() == 60.0
    assert schedule.due(60.0) == (["b"], [])


def test_a_key_tracked_after_another_expired_takes_its_slot_cleanly() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(10.0, 5.0)
    schedule.track("gone", now=0.0)
    assert schedule.due(10.0) == (["gone"], [])
    assert schedule.due(15.0) == ([], ["gone"])
    schedule.track("next", now=15.0)
    assert len(schedule) == 1
    assert schedule.next_wake() == 25.0
    assert schedule.due(25.0) == (["next"], [])
    assert run_until(schedule, 40.0) == [(30.0, "expire", "next")]


def test_tracked_keys_add_no_object_for_the_collector_to_walk() -> None:
    """Every full collection walks each tracked object: at 10,000 connections an entry and
    a heap item per key were 20,000 more. A key's times and heap item are numbers."""
    keys = [object() for _ in range(1000)]
    schedule: HeartbeatSchedule[object] = HeartbeatSchedule(1.0, 2.0)
    schedule.track(keys[0], now=0.0)
    gc.collect()
    before = len(gc.get_objects())
    for key in keys[1:]:
        schedule.track(key, now=0.0)
    pinged, _ = schedule.due(1.0)  # every item popped and pushed again
    assert len(pinged) == len(keys)
    gc.collect()
    assert len(gc.get_objects()) - before < 10
