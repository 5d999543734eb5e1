"""Sizes of a ``bench.identity`` run and the plumbing its scenarios share."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.core import Run, median_of
from bench.harness import BenchError, Fleet


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    latency_connects: int = 300  # connects one at a time: the latency to the first frame
    connect_clients: int = 2000  # then a burst: the rate and the server CPU per connect
    connect_generators: int = 2
    connect_concurrency: int = 8  # handshakes in flight per generator during the burst
    warmup_clients: int = 20
    verify_n: int = 2000
    users: int = 200
    user_messages: int = 3000
    user_rate: float = 500.0
    message_size: int = 64
    delivery_timeout: float = 120.0
    stall_timeout: float = 10.0
    max_wait: float = 1800.0  # for other CPU-heavy runs to end, before each measurement
    stabilizer_path: str | None = None


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, latency_connects=100, connect_clients=300, verify_n=300,
                    users=30, user_messages=600, delivery_timeout=60.0)


def open_clients(fleet: Fleet, gens: Sequence[int], port: int, mode: str,
                 paths: Sequence[Any], concurrency: int) -> tuple[float, list[int]]:
    """Open `paths` from the generators `gens` (spread evenly); all must connect.

    Returns the wall seconds it took and every client's connect time in µs (``bench.probe``).
    """
    started = time.monotonic()
    shares = [list(paths[i::len(gens)]) for i in range(len(gens))]
    for index, share in zip(gens, shares, strict=True):
        fleet.gens[index].send({"cmd": "connect", "port": port, "paths": share, "mode": mode,
                                "concurrency": concurrency, "timeout": 30.0})
    replies = [fleet.gens[index].reply(300.0) for index in gens]
    wall = time.monotonic() - started
    connected = sum(r["connected"] for r in replies)
    if connected != len(paths):
        errors = [e for r in replies for e in r["errors"]][:5]
        raise BenchError(f"only {connected} of {len(paths)} clients connected: {errors}")
    return wall, [us for r in replies for us in r["connect_us"]]


def delivered(fleet: Fleet) -> int:
    """Stamped messages counted by every generator so far."""
    for gen in fleet.gens:
        gen.send({"cmd": "stats", "light": True})
    return sum(int(gen.reply(30.0)["bcast"]) for gen in fleet.gens)


def wait_delivered(fleet: Fleet, expected: int, plan: Plan) -> int:
    """Poll until `expected` messages were counted, nothing arrived for stall_timeout seconds,
    or delivery_timeout passed; return the count."""
    deadline = time.monotonic() + plan.delivery_timeout
    last, last_change = -1, time.monotonic()
    while True:
        count = delivered(fleet)
        now = time.monotonic()
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, now
        elif now - last_change > plan.stall_timeout or now > deadline:
            return count
        time.sleep(0.02)


def med(runs: list[Run], scenario: str, kind: str, key: str) -> float | None:
    """The median of `key` over the repetitions of `kind` that did not fail."""
    clients = next((r.clients for r in runs if r.scenario == scenario and r.kind == kind), 0)
    return median_of(runs, scenario, kind, clients, key)


def spread(runs: list[Run], scenario: str, kind: str, key: str, digits: int = 0) -> str:
    """The range (min to max) of `key` over the repetitions; n/a for fewer than two."""
    values = [r.values[key] for r in runs
              if r.scenario == scenario and r.kind == kind and key in r.values and not r.error]
    if len(values) < 2:
        return "n/a"
    return f"{min(values):,.{digits}f}–{max(values):,.{digits}f}"


def worst(runs: list[Run], scenario: str, kind: str, key: str) -> float | None:
    values = [r.values[key] for r in runs
              if r.scenario == scenario and r.kind == kind and key in r.values]
    return max(values) if values else None
