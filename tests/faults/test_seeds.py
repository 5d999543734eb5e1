"""The fault checker in the normal suite: a few fixed seeds, each a fresh cluster (redis-server,
a fault proxy per replica, three uvicorn replicas) run through its schedule, healed, and
judged against every invariant. Together they take about two minutes on two cores.

The seeds cover both history modes and every fault kind; the longer randomized campaign is
`python -m tests.faults --seeds N --minutes M` (RELIABILITY.md). A failure prints the
violations and the command that replays the seed.
"""

from __future__ import annotations

import pytest

from tests.faults.runner import run_schedule
from tests.faults.schedule import PROXY_FAULTS, REDIS_FAULTS, REPLICA_FAULTS, generate
from tests.support.redis_server import NoRedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

OPS = 60
SEEDS = (13, 37, 8)


def test_the_fixed_seeds_cover_both_modes_and_every_fault() -> None:
    schedules = [generate(seed, OPS) for seed in SEEDS]
    assert {schedule.history for schedule in schedules} == {True, False}
    kinds = {name for schedule in schedules for name in schedule.counts()}
    faults = {f"fault:{kind}" for kind in (*PROXY_FAULTS, *REDIS_FAULTS, *REPLICA_FAULTS)}
    assert faults <= kinds, faults - kinds


@pytest.mark.timeout(100)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_fixed_schedule_keeps_every_invariant(seed: int) -> None:
    lines: list[str] = []
    try:
        result = await run_schedule(generate(seed, OPS), log=lines.append)
    except NoRedisServer as exc:
        pytest.fail(str(exc), pytrace=False)
    assert result.operations > OPS // 2
    assert not result.violations, "\n".join([
        f"seed {seed} broke {len(result.violations)} invariant(s); replay with "
        f"`python -m tests.faults --seed {seed} --ops {OPS} -v`; history and replica logs "
        f"in {result.kept}", *result.violations, "the run:", *lines])
