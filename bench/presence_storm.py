"""The reconnect storm of ``bench.presence`` (see its docstring for the method), and the
plan and the client plumbing both of its scenarios share."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.core import Run, fmt, log, table
from bench.harness import BenchError, ForeignLoad, LoadGen, Server, free_port
from bench.identity.common import med, spread
from bench.support import RedisProc, wait_idle

CLIENT: Final = "bench.presence_client"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    joiners: int = 1000
    warmup: int = 50
    followers: int = 100
    monitor_ops: int = 20
    storm_clients: int = 1000
    storm_generators: int = 2
    windows: tuple[float, ...] = (0.0, 0.05)
    exact_timeout: float = 120.0
    quiet: float = 5.0  # no diff for this long: the observer's copy will not become exact
    max_wait: float = 1800.0  # for other CPU-heavy runs to end, before each measurement
    stabilizer_path: str | None = None


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, joiners=300, warmup=30, followers=50, monitor_ops=10,
                    storm_clients=300, exact_timeout=60.0)


def ask(gen: LoadGen, cmd: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    gen.send(cmd)
    reply = gen.reply(timeout)
    if reply.get("error"):
        raise BenchError(f"client: {reply['error']}")
    return reply


def v2_clients(gen: LoadGen, port: int, ids: list[str], *, gen_value: Any = None,
               observer: bool = False, listed: bool = True, concurrency: int = 64) -> None:
    """Connect v2 clients following the group's presence (listed in it with `gen_value`
    unless `listed` is false); raise unless all did."""
    reply = ask(gen, {"cmd": "connect", "port": port, "ids": ids, "gen": gen_value,
                      "observer": observer, "listed": listed, "concurrency": concurrency},
                300.0)
    if reply["connected"] != len(ids):
        raise BenchError(f"{reply['connected']} of {len(ids)} v2 clients subscribed: "
                         f"{reply['errors']}")


def settle(gens: Sequence[LoadGen], quiet: float = 0.3, limit: float = 60.0) -> dict[str, int]:
    """Wait until the clients' received bytes stay unchanged for `quiet` seconds; return
    their summed counters."""
    deadline = time.monotonic() + limit
    last: dict[str, int] = {}
    since = time.monotonic()
    while True:
        now: dict[str, int] = Counter()
        for gen in gens:
            now.update(ask(gen, {"cmd": "stats"}))
        if now != last:
            last, since = dict(now), time.monotonic()
        elif time.monotonic() - since >= quiet or time.monotonic() > deadline:
            return last
        time.sleep(0.05)


def server_args(plan: Plan, redis: RedisProc, config: dict[str, Any] | None = None
                ) -> list[str]:
    args = ["--redis-url", redis.url]
    if plan.stabilizer_path:
        args += ["--stabilizer-path", plan.stabilizer_path]
    if config:
        args += ["--stabilizer-config", json.dumps(config)]
    return args


def storm_run(window: float, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run("storm", f"window {window:g}s", plan.storm_clients, rep)
    n = plan.storm_clients
    ids = [f"s{i}" for i in range(n)]
    config = {"presence_diff_window": window}
    with RedisProc(log_dir) as redis, \
            Server("stabilizer", free_port(), log_dir, module="bench.presence_servers",
                   extra_args=server_args(plan, redis, config)) as server:
        gens = [LoadGen(i + 1, log_dir, module=CLIENT) for i in range(plan.storm_generators)]
        observer = LoadGen(0, log_dir, module=CLIENT)
        wait = {"cmd": "wait", "timeout": plan.exact_timeout, "quiet": plan.quiet}
        try:
            server.wait_ready()
            v2_clients(observer, server.port, ["observer"], observer=True)
            ask(observer, {"cmd": "arm", "gen": 1, "n": n})
            for index, gen in enumerate(gens):
                v2_clients(gen, server.port, ids[index::len(gens)], gen_value=1)
            if not ask(observer, wait, plan.exact_timeout + 30)["exact"]:
                raise BenchError("the observer's presence is not exact before the storm")
            before = settle(gens)
            server.request("POST", "/bench/gc")
            ask(observer, {"cmd": "arm", "gen": 2, "n": n})
            foreign = ForeignLoad([server.pid, redis.pid, observer.pid, *(g.pid for g in gens)])
            cpu0, redis0 = server.cpu_seconds(), redis.cpu_seconds()
            for gen in gens:
                gen.send({"cmd": "storm", "gen": 2, "concurrency": n})
            storms = [gen.reply(300.0) for gen in gens]
            seen = ask(observer, wait, plan.exact_timeout + 30)
            after = settle(gens)
            cpu1, redis1 = server.cpu_seconds(), redis.cpu_seconds()
            run.values.update(storm_values(storms, seen, before, after, n))
            run.values.update({"server_cpu_s": cpu1 - cpu0, "redis_cpu_s": redis1 - redis0,
                               "foreign_pct": foreign.percent()})
            if not seen["exact"]:
                found = server.request("GET", "/bench/presence")
                run.values.update({"redis_listed": found["listed"],
                                   "redis_members": found["members"]})
                log(f"storm, window {window:g}s: the observer lists {seen['matching']} of "
                    f"{n} clients after it (Redis: {found['listed']} listed, "
                    f"{found['members']} members)")
        finally:
            for child in (observer, *gens):
                child.stop(grace=3.0)
    return run


def storm_values(storms: list[dict[str, Any]], seen: dict[str, Any], before: dict[str, int],
                 after: dict[str, int], n: int) -> dict[str, float]:
    """What the storm measured: every client must have reconnected; the observer's copy
    may not be exact (then `exact` is 0 and `missing` says by how many)."""
    connected = sum(s["connected"] for s in storms)
    if connected != n:
        errors = [e for s in storms for e in s["errors"]][:3]
        raise BenchError(f"{connected} of {n} clients reconnected: {errors}")
    t0 = min(s["t0"] for s in storms)
    diffs = [(t, size) for t, size in seen["diffs"] if t >= t0]
    sizes = [size for _, size in diffs] or [0]
    span = diffs[-1][0] - diffs[0][0] if len(diffs) > 1 else 0.0
    values = {
        "exact": float(seen["exact"]),
        "missing": float(n - seen["matching"]),
        "reconnected_s": max(s["t_done"] for s in storms) - t0,
        "diffs": len(diffs),
        "diff_mean_b": statistics.fmean(sizes),
        "diff_max_b": max(sizes),
        "diffs_per_s": len(diffs) / span if span > 0 else float(len(diffs)),
        "frames_all": after["frames"] - before["frames"],
        "mb_all": (after["bytes"] - before["bytes"]) / 1e6,
        "refused": after["refused"] - before["refused"],
    }
    if seen["exact"]:
        values["exact_s"] = seen["exact_at"] - t0
    return values


def storm_table(runs: list[Run], plan: Plan) -> str:
    rows = []
    for window in plan.windows:
        kind = f"window {window:g}s"

        def m(key: str, digits: int = 0, k: str = kind) -> str:
            return fmt(med(runs, "storm", k, key), digits)

        done = [r for r in runs if r.scenario == "storm" and r.kind == kind and not r.error]
        inexact = [r for r in done if not r.values.get("exact")]
        exact = (f"{len(done) - len(inexact)} of {len(done)}" if not inexact else
                 f"{len(done) - len(inexact)} of {len(done)}; missing "
                 + ", ".join(f"{r.values['missing']:g}" for r in inexact))
        rows.append([kind, exact, m("exact_s", 2), spread(runs, "storm", kind, "exact_s", 2),
                     m("reconnected_s", 2), m("diffs"), m("diff_mean_b"), m("diff_max_b"),
                     m("diffs_per_s"), m("server_cpu_s", 2),
                     spread(runs, "storm", kind, "server_cpu_s", 2), m("redis_cpu_s", 2),
                     m("frames_all"), m("mb_all", 1), m("refused")])


    return (f"### Reconnect storm: {plan.storm_clients:,} v2 clients following one "
            "channel's presence drop and reconnect at once; the observer's view\n\n"
            + table(["presence_diff_window", "exact again", "s until exact", "range",
                     "s until all reconnected", "diff frames", "mean bytes", "max bytes",
                     "diffs / s", "server CPU s", "range", "Redis CPU s",
                     "frames to all clients", "MB to all clients",
                     "subscribes refused (unavailable), sent again"], rows))
