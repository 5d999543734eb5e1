"""The schedule generator: a seed replays, and every schedule heals what it breaks."""

from __future__ import annotations

from tests.faults.schedule import (
    PROXY_FAULTS,
    REDIS_FAULTS,
    REPLICA_FAULTS,
    Connect,
    Fault,
    Membership,
    Op,
    Send,
    Together,
    generate,
)


def flat(ops: tuple[Op, ...]) -> list[Op]:
    out: list[Op] = []
    for op in ops:
        out.extend(flat(op.ops) if isinstance(op, Together) else [op])
    return out


def test_a_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert generate(42) == generate(42)
    assert generate(42).ops != generate(43).ops


def test_every_fault_started_is_healed_by_the_end_and_none_overlap_on_a_target() -> None:
    for seed in range(200):
        active: set[tuple[str, int]] = set()
        for op in generate(seed).ops:  # a Together never holds a heal: order is plain
            for part in flat((op,)):
                if isinstance(part, Fault) and part.kind != "restart":
                    key = (part.kind, part.target)
                    if part.heal:
                        active.discard(key)
                    else:
                        assert not any(k[1] in (part.target, -1) or part.target == -1
                                       for k in active), f"seed {seed}: overlapping faults"
                        active.add(key)
        assert not active, f"seed {seed} leaves {active} on"


def test_schedules_cover_every_operation_and_fault() -> None:
    seen: set[str] = set()
    for seed in range(100):
        for op in flat(generate(seed).ops):
            if isinstance(op, Fault):
                seen.add(op.kind)
            elif isinstance(op, Connect):
                seen.add("together" if len(op.replicas) > 1 else "connect")
                seen.add("resume" if op.resume else "fresh")
            elif isinstance(op, Send):
                seen.add("bulk" if op.bulk else "send")
            elif isinstance(op, Membership):
                seen.add("join" if op.join else "leave")
            else:
                seen.add(type(op).__name__)
    expected = {*PROXY_FAULTS, *REDIS_FAULTS, *REPLICA_FAULTS, "connect", "together",
                "resume", "fresh", "bulk", "send", "join", "leave", "Disconnect", "Reader",
                "Pause"}
    assert expected <= seen, expected - seen
    assert {True, False} == {generate(seed).history for seed in range(20)}
