"""Reconnect storm: a replica dies and all its clients reconnect to a survivor at once.

Two replicas of one kind (``bench.replicas``) share a redis-server started for the run. N
clients (raw protocol clients of ``bench.loadgen``, spread over G generator processes)
connect to replica A. A is SIGKILLed; every generator then reconnects all of its clients,
with the same client ids, to replica B at once (``--concurrency`` handshakes in flight per
generator). Measured during the storm:

* **time until every client is back** (the slowest generator's wall time) and the
  handshake latency of each client (TCP connect to the 101 response), p50 and p99;
* **B's server CPU per connect** (user + system of the process), against the ``raw``
  replica doing the same (the cost of a plain FastAPI accept: no registry at all), and
  how much of it Python's cyclic collector took (``gc.callbacks`` in the replica, read
  over ``GET /bench/collector``): the collector walks every live object whenever enough
  new ones survive, so its share moves with the heap and with when a full collection
  falls, and the CPU outside it is the steadier figure;
* **Redis round trips and commands per connect**: ``INFO stats`` ``total_reads_processed``
  (one read event per round trip a client makes, pipelined commands included) and
  ``total_commands_processed`` deltas over the storm, divided by N;
* **refused**: clients that did not get back in 3 attempts (there is no connection limit,
  so any is a failure).

Then **churn** (``--waves``, default 1): every client leaves B with a clean close, and all
come back at once again; B's server CPU per leave and per connect of that wave. B has now
served and closed connections, so what the closed ones left behind (objects waiting for
Python's cyclic collector, presence to remove) is paid here.

For the stabilizer the dead replica's presence entries are still in Redis when the
clients come back (its node_ttl has not expired): each registration replaces an entry that
names a dead node, as in a real crash.

With ``--pin`` the survivor runs alone on CPU 0 and everything else (Redis, the load
generators, replica A, this controller) on the other CPUs, so that the survivor's CPU per
connect is not shared with the processes that load it.

With ``--census`` the survivor also counts, by type, the objects it promotes to the
collector's oldest generation (``bench.census``; the CPU figures of such a run are not
comparable with a run without it).

``python -m bench.storm [--quick] [--waves K] [--pin] [--census] [--servers raw,stabilizer]
[--baseline REV]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench import census
from bench._common import raise_nofile_limit
from bench.cluster import Plan as ClusterPlan
from bench.cluster import client_paths, connect, replica
from bench.core import (
    RESULTS,
    Run,
    compare_table,
    describe_code,
    environment,
    export_baseline,
    fmt,
    guarded,
    median_of,
    ratio,
    report_tail,
    rotated,
    snapshot_stabilizer,
    table,
    with_baseline,
)
from bench.harness import BenchError, Fleet, ForeignLoad, install_cleanup, stop_all
from bench.support import RedisProc, quantile

CONTENDERS: Final = ("raw", "stabilizer")


@dataclass(frozen=True)
class Plan:
    reps: int
    clients: int
    generators: int
    concurrency: int = 250  # handshakes in flight per generator during the storm
    waves: int = 1  # churn after the storm: all leave B and come back, this many times
    pin: bool = False  # B alone on CPU 0; everything else (Redis, generators, A) on the rest
    stabilizer_path: str | None = None
    baseline_label: str | None = None
    baseline_path: str | None = None
    census: bool = False  # count what the survivor promotes (bench.census; CPU not comparable)


FULL: Final = Plan(reps=3, clients=10_000, generators=5)
QUICK: Final = Plan(reps=1, clients=1_000, generators=2)


def pin(pid: int, cpus: set[int]) -> None:
    """Run every thread of process `pid` on `cpus` only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def redis_stats(redis: RedisProc) -> tuple[int, int]:
    """(total_reads_processed, total_commands_processed) of the server."""
    import redis as redis_py

    with redis_py.Redis(host="127.0.0.1", port=redis.port) as client:
        info = client.info("stats")
    return int(info["total_reads_processed"]), int(info["total_commands_processed"])


def storm_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    cluster_plan = ClusterPlan(reps=1, stabilizer_path=plan.stabilizer_path,
                               baseline_label=plan.baseline_label,
                               baseline_path=plan.baseline_path)
    n = plan.clients
    ids = [f"s{rep}x{i}" for i in range(n)]
    paths = client_paths(kind, ids)
    gens = list(range(plan.generators))
    with RedisProc(log_dir) as redis, Fleet(plan.generators, log_dir) as fleet:
        first = replica(kind, "A", redis, cluster_plan, log_dir)
        survivor = replica(kind, "B", redis, cluster_plan, log_dir,
                           *(["--census"] if plan.census else []))
        first.wait_ready()
        survivor.wait_ready()
        if plan.pin:
            others = set(range(1, os.cpu_count() or 2))
            pin(survivor.pid, {0})
            for pid in (first.pid, redis.pid, *fleet.pids, os.getpid()):
                pin(pid, others)
        connect(fleet, gens, first.port, kind, paths)
        if first.wait_count(n) != n:
            raise BenchError(f"replica A holds {first.count()} of {n} clients")
        shares = [paths[i::len(gens)] for i in gens]
        first.proc.kill()  # SIGKILL: no goodbye, presence left behind
        first.proc.wait(10)
        time.sleep(0.5)  # the generators see their sockets end
        reads0, commands0 = redis_stats(redis)
        collector0 = collector_seconds(survivor)
        promoted0 = promoted(survivor) if plan.census else None
        cpu0 = survivor.cpu_seconds()
        load = ForeignLoad([survivor.pid, redis.pid, *fleet.pids])
        started = time.monotonic()
        for index, share in zip(gens, shares, strict=True):
            fleet.gens[index].send({"cmd": "connect", "port": survivor.port, "paths": share,
                                    "mode": "ws", "concurrency": plan.concurrency,
                                    "timeout": 60.0, "latencies": True})
        replies = [fleet.gens[index].reply(300.0) for index in gens]
        back = time.monotonic() - started
        held = survivor.wait_count(sum(r["connected"] for r in replies), timeout=60.0)
        cpu = survivor.cpu_seconds() - cpu0
        collector = collector_seconds(survivor) - collector0
        by_type = (census.per_connect(promoted0, promoted(survivor), n)
                   if promoted0 is not None else None)
        reads, commands = redis_stats(redis)
        churn = [churn_wave(survivor, fleet, gens, shares, plan) for _ in range(plan.waves)]
        foreign = load.percent()
    latencies = sorted(t for r in replies for t in r["latencies"])
    connected = sum(r["connected"] for r in replies)
    refused = sum(r["failed"] for r in replies)
    if connected == 0:
        raise BenchError(f"no client reconnected: {[e for r in replies for e in r['errors']]}")
    return Run("storm", kind, n, rep, values={
        "back_s": back,
        "p50_ms": (quantile(latencies, 0.5) or 0.0) * 1000,
        "p99_ms": (quantile(latencies, 0.99) or 0.0) * 1000,
        "cpu_us_per_connect": cpu / connected * 1e6,
        "collector_us_per_connect": collector / connected * 1e6,
        "round_trips_per_connect": (reads - reads0) / connected,
        "commands_per_connect": (commands - commands0) / connected,
        "refused": float(refused),
        **({"leave_cpu_us": quantile(sorted(c[0] for c in churn), 0.5) or 0.0,
            "again_cpu_us": quantile(sorted(c[1] for c in churn), 0.5) or 0.0}
           if churn else {}),
        "outside_us_per_connect": (cpu - collector) / connected * 1e6,
        "held": float(held),
        "foreign_pct": foreign,
        **({"promoted_per_connect": sum(by_type.values())} if by_type is not None else {}),
    }, notes={"errors": [e for r in replies for e in r["errors"]][:5],
              **({"promoted": by_type} if by_type is not None else {})})


def promoted(server: Any) -> dict[str, Any]:
    """The survivor's census so far (bench.census)."""
    return dict(server.request("GET", "/bench/promoted", timeout=60.0))


def census_report(runs: list[Run], kinds: list[str]) -> str:
    """Promotions per connect by kind (the mean of the repetitions), and the types whose
    figures differ most from raw's."""
    by_kind: dict[str, dict[str, float]] = {}
    for kind in kinds:
        counted = [r.notes["promoted"] for r in runs
                   if r.kind == kind and r.error is None and "promoted" in r.notes]
        if counted:
            names = {name for counts in counted for name in counts}
            by_kind[kind] = {name: sum(c.get(name, 0.0) for c in counted) / len(counted)
                             for name in names}
    if "raw" not in by_kind:
        return ""
    rows = [["all objects", *(fmt(sum(by_kind[k].values()), 1) for k in by_kind)]]
    rows += [[name, *(fmt(v, 2) for v in values)]
             for name, values in census.largest_differences(by_kind, "raw")]
    return ("Census: objects the survivor promoted to the oldest generation per connect, "
            "by type (mean of the repetitions; the census's own cost is in the CPU figures "
            "above, which are not comparable with a run without it)\n\n"
            + table(["type", *by_kind], rows))


def collector_seconds(server: Any) -> float:
    """CPU seconds the server's process has spent in Python's cyclic collector."""
    return float(server.request("GET", "/bench/collector", timeout=30.0)["seconds"])


def churn_wave(survivor: Any, fleet: Fleet, gens: list[int], shares: list[list[str]],
                plan: Plan) -> tuple[float, float]:
    """Every client leaves B (a clean close), then all come back at once: B's server CPU
    per leave and per connect of that wave, in µs. Unlike the first wave, B has served
    and closed connections before, so this is the cost under churn."""
    n = sum(len(share) for share in shares)
    cpu0 = survivor.cpu_seconds()
    for index in gens:
        fleet.gens[index].send({"cmd": "close"})
    for index in gens:
        fleet.gens[index].reply(120.0)
    if survivor.wait_count(0, timeout=60.0) != 0:
        raise BenchError(f"replica B still holds {survivor.count()} clients after they left")
    time.sleep(1.0)  # the closes' last steps (presence, sessions) finish
    leave = survivor.cpu_seconds() - cpu0
    cpu1 = survivor.cpu_seconds()
    for index, share in zip(gens, shares, strict=True):
        fleet.gens[index].send({"cmd": "connect", "port": survivor.port, "paths": share,
                                "mode": "ws", "concurrency": plan.concurrency,
                                "timeout": 60.0})
    replies = [fleet.gens[index].reply(300.0) for index in gens]
    connected = sum(r["connected"] for r in replies)
    if connected != n or survivor.wait_count(n, timeout=60.0) != n:
        raise BenchError(f"the second wave brought back {connected} of {n} clients")
    return leave / n * 1e6, (survivor.cpu_seconds() - cpu1) / n * 1e6


def report(runs: list[Run], plan: Plan, kinds: list[str]) -> str:
    def med(kind: str, key: str) -> float | None:
        return median_of(runs, "storm", kind, plan.clients, key)

    def spread(kind: str, key: str) -> str:
        values = [r.values[key] for r in runs
                  if r.kind == kind and r.error is None and key in r.values]
        if len(values) < 2:
            return ""
        return f" ({min(values):,.0f}–{max(values):,.0f})"

    rows = []
    for kind in kinds:
        rows.append([
            kind, fmt(med(kind, "back_s"), 2), fmt(med(kind, "p50_ms"), 1),
            fmt(med(kind, "p99_ms"), 1),
            fmt(med(kind, "cpu_us_per_connect"), 0) + spread(kind, "cpu_us_per_connect"),
            ratio(med(kind, "cpu_us_per_connect"), med("raw", "cpu_us_per_connect")),
            fmt(med(kind, "collector_us_per_connect"), 0),
            fmt(med(kind, "outside_us_per_connect"), 0),
            ratio(med(kind, "outside_us_per_connect"), med("raw", "outside_us_per_connect")),
            fmt(med(kind, "round_trips_per_connect"), 2),
            fmt(med(kind, "commands_per_connect"), 2),
            fmt(med(kind, "refused"), 0), fmt(med(kind, "foreign_pct"), 0),
        ])
    text = (f"Reconnect storm: {plan.clients:,} clients of a SIGKILLed replica reconnect to "
            f"the survivor ({plan.generators} generators, {plan.concurrency} handshakes in "
            f"flight each), median of {plan.reps}"
            f"{'; the survivor alone on CPU 0' if plan.pin else ''}\n\n" + table(
                ["server", "all back (s)", "p50 connect (ms)", "p99 connect (ms)",
                 "server CPU µs / connect", "vs raw", "of which the collector",
                 "outside the collector", "vs raw", "Redis round trips / connect",
                 "Redis commands / connect (scripts' included)", "refused",
                 "other load % of a core"], rows))
    churn_rows = []
    for kind in kinds:
        leave, again = med(kind, "leave_cpu_us"), med(kind, "again_cpu_us")
        cycle = None if leave is None or again is None else leave + again
        raw_leave, raw_again = med("raw", "leave_cpu_us"), med("raw", "again_cpu_us")
        raw_cycle = None if raw_leave is None or raw_again is None else raw_leave + raw_again
        churn_rows.append([
            kind, fmt(leave, 0) + spread(kind, "leave_cpu_us"), ratio(leave, raw_leave),
            fmt(again, 0) + spread(kind, "again_cpu_us"), ratio(again, raw_again),
            fmt(cycle, 0), ratio(cycle, raw_cycle)])
    if plan.waves:
        text += (f"\n\nChurn: then every client leaves B (a clean close) and all come back "
                 f"at once, {plan.waves} time(s); B's server CPU, median of the waves and "
                 f"then of the repetitions\n\n" + table(
                     ["server", "µs / leave", "vs raw", "µs / connect again", "vs raw",
                      "µs / leave + connect", "vs raw"], churn_rows))
    if plan.baseline_label and "stabilizer" in kinds:
        text += "\n\n" + compare_table(plan.baseline_label, [
            (metric, med(plan.baseline_label, key), med("stabilizer", key), digits)
            for metric, key, digits in (
                ("server CPU µs / connect", "cpu_us_per_connect", 0),
                ("of which the collector", "collector_us_per_connect", 0),
                ("outside the collector", "outside_us_per_connect", 0),
                ("churn: µs / leave", "leave_cpu_us", 0),
                ("churn: µs / connect again", "again_cpu_us", 0),
                ("Redis round trips / connect", "round_trips_per_connect", 2),
                ("p99 connect (ms)", "p99_ms", 1), ("all back (s)", "back_s", 2))])
    if plan.census:
        text += "\n\n" + census_report(runs, kinds)
    tail = report_tail(runs, foreign=[])  # (the table shows the other load per run)
    if tail:
        text += "\n\n" + "\n\n".join(tail)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 clients, one repetition")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--waves", type=int, help="churn waves after the storm (default 1)")
    parser.add_argument("--servers", default=",".join(CONTENDERS))
    parser.add_argument("--baseline", metavar="REV",
                        help="also run stabilizer/ as of git revision REV (stabilizer@REV)")
    parser.add_argument("--pin", action="store_true",
                        help="run the survivor alone on CPU 0 and everything else on the "
                             "other CPUs (needs 2 or more)")
    parser.add_argument("--census", action="store_true",
                        help="count what the survivor promotes to the collector's oldest "
                             "generation, by type (bench.census; its CPU figures are then "
                             "not comparable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if args.clients is not None:
        plan = replace(plan, clients=args.clients)
    if args.waves is not None:
        plan = replace(plan, waves=args.waves)
    if args.census:
        plan = replace(plan, census=True)
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs at least 2 CPUs")
        plan = replace(plan, pin=True)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in CONTENDERS]:
        parser.error(f"unknown contender: {unknown}")
    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-storm-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, Any] = {}
    if args.baseline:
        env["baseline"] = export_baseline(args.baseline, stamp)
        kinds = with_baseline(kinds, env["baseline"]["label"])
        plan = replace(plan, baseline_label=env["baseline"]["label"],
                       baseline_path=env["baseline"]["path"])
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), **env}
    plan = replace(plan, stabilizer_path=str(snapshot))
    started = time.monotonic()
    runs: list[Run] = []
    try:
        for rep in range(plan.reps):
            for kind in rotated(kinds, rep):
                runs.append(guarded(partial(storm_run, kind, plan, rep, log_dir),
                                    "storm", kind, plan.clients, rep))
    finally:
        stop_all()
    text = report(runs, plan, kinds)
    out = args.out or RESULTS / f"storm-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.storm", *(argv or sys.argv[1:])]),
        "elapsed_s": round(time.monotonic() - started, 1),
        "runs": [asdict(r) for r in runs], "report": text}, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}\n"
          f"{describe_code(env)}\n")
    print(text)
    print(f"\nAll repetitions: {out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
