"""The maintenance schedule (pure/upkeep.py), driven by a clock passed in."""

from __future__ import annotations

from stabilizer.pure.upkeep import RETRY_FLOOR, UpkeepSchedule


def run_for(schedule: UpkeepSchedule, until: float,
            retry_in: float | None = None) -> tuple[int, int]:
    """Wake as the loop does until `until`; count (upkeeps, memory checks) run."""
    upkeeps = checks = 0
    now = 0.0
    while now <= until:
        upkeep_due, check_due = schedule.due(now)
        assert upkeep_due or check_due, now  # a wake-up always has work
        if upkeep_due:
            upkeeps += 1
            schedule.upkept(now, retry_in)
        if check_due:
            checks += 1
            schedule.checked(now)
        now = schedule.next_wake()
    return upkeeps, checks


def test_a_short_memory_check_interval_leaves_the_upkeep_at_node_ttl_over_three() -> None:
    """node_ttl 10, memory_check_interval 0.05, five seconds: the upkeep runs at 0 and at
    3.33 (it ran at every memory check, some 100 times, each a report HSET walking every
    connection); the memory check runs at its own rate."""
    upkeeps, checks = run_for(UpkeepSchedule(10 / 3, 0.05, now=0.0), until=5.02)
    assert upkeeps == 2
    assert checks == 100


def test_a_long_memory_check_interval_leaves_the_upkeep_at_its_own_rate() -> None:
    upkeeps, checks = run_for(UpkeepSchedule(1.0, 60.0, now=0.0), until=10.0)
    assert (upkeeps, checks) == (11, 0)


def test_an_upkeep_that_failed_runs_again_after_its_backoff_never_later_than_its_period(
) -> None:
    schedule = UpkeepSchedule(3.0, 60.0, now=0.0)
    schedule.upkept(1.0, retry_in=0.5)
    assert schedule.next_wake() == 1.5
    schedule.upkept(2.0, retry_in=30.0)
    assert schedule.next_wake() == 5.0
    schedule.upkept(6.0, retry_in=0.0)  # a backoff may draw 0: no busy loop
    assert schedule.next_wake() == 6.0 + RETRY_FLOOR


def test_the_upkeep_is_due_at_start_and_the_check_a_period_later() -> None:
    schedule = UpkeepSchedule(3.0, 0.5, now=100.0)
    assert schedule.due(100.0) == (True, False)
    schedule.upkept(100.2)
    assert schedule.next_wake() == 100.5
    assert schedule.due(100.5) == (False, True)


def test_a_hurried_upkeep_is_due_at_once_and_then_keeps_its_period() -> None:
    schedule = UpkeepSchedule(3.0, 60.0, now=0.0)
    schedule.upkept(0.1)
    schedule.hurry(1.0)  # a subscription back after a loss
    assert schedule.due(1.0) == (True, False)
    schedule.upkept(1.2)
    assert schedule.next_wake() == 4.2
    schedule.upkept(2.0, retry_in=0.5)
    schedule.hurry(3.0)  # never later than it was due
    assert schedule.next_wake() == 2.5
