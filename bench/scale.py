"""10,000 idle connections on one replica: memory per connection and heartbeat CPU.

Usage::

    python -m bench.scale --quick          # 2,000 connections, one repetition
    python -m bench.scale                  # 10,000 connections, 3 repetitions, medians
    python -m bench.scale --connections 20000 --servers raw,stabilizer

The scenarios are ``bench.core``'s, unchanged, run at N connections (see BENCHMARKS.md):

* memory: the fan-out run of ``bench.core`` with N clients and a few broadcasts: RSS per
  idle connection (after ``gc.collect()``, against the same server with 0 clients), server
  CPU per connect, and the fan-out cost at N as a by-product;
* heartbeat: N idle clients answering every ping, interval 1 s, timeout 10 s: CPU % of a
  core, µs of CPU per ping, pings per connection per second.

Servers: ``raw``, ``seed`` (fastapi-websocket-stabilizer 1.1.0), ``stabilizer`` (embedded
backend) and ``stabilizer-redis`` (the same app with ``redis_url`` pointing at a
redis-server started for that run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Final

from bench._common import raise_nofile_limit
from bench.core import (
    RESULTS,
    Plan,
    Run,
    environment,
    fanout_run,
    fmt,
    guarded,
    heartbeat_run,
    log,
    median_of,
    ratio,
    report_tail,
    rotated,
    sized_label,
    snapshot_stabilizer,
    table,
)
from bench.harness import REPO, install_cleanup, stop_all
from bench.support import RedisProc, wait_idle

KINDS: Final = ("raw", "seed", "stabilizer", "stabilizer-redis")
SCENARIOS: Final = ("memory", "heartbeat")


def plan_for(connections: int, quick: bool) -> Plan:
    return Plan(
        fanout=((connections, 5),),
        memory_clients=connections,
        message_size=64,
        heartbeat_clients=connections,
        heartbeat_interval=1.0,
        heartbeat_timeout=10.0,
        heartbeat_settle=3.0 if quick else 5.0,
        heartbeat_window=5.0 if quick else 15.0,
        reps=1 if quick else 3,
        generators=4 if connections <= 5000 else 5,
        delivery_timeout=60.0 if quick else 120.0,
    )


def measured(make: Callable[[str, Plan], Run], kind: str, plan: Plan, log_dir: Path) -> Run:
    """Run one core scenario for `kind`; stabilizer-redis gets its own redis-server."""
    wait_idle(log)
    if kind != "stabilizer-redis":
        return make(kind, plan)
    with RedisProc(log_dir) as redis:
        config = json.loads(plan.stabilizer_config or "{}")
        config["redis_url"] = redis.url
        cpu_before = redis.cpu_seconds()
        run = make("stabilizer", replace(plan, stabilizer_config=json.dumps(config)))
        run.kind = kind
        run.values["redis_cpu_s_whole_run"] = redis.cpu_seconds() - cpu_before
    return run


def memory(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    clients, broadcasts = plan.fanout[0]
    return measured(lambda k, p: fanout_run(k, clients, broadcasts, p, rep, log_dir),
                    kind, plan, log_dir)


def heartbeat(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    return measured(lambda k, p: heartbeat_run(k, p, rep, log_dir), kind, plan, log_dir)


def run_all(plan: Plan, kinds: Sequence[str], scenarios: Sequence[str],
            log_dir: Path) -> list[Run]:
    runs: list[Run] = []
    n = plan.memory_clients
    for rep in range(plan.reps):
        if "memory" in scenarios:
            for kind in rotated(kinds, rep):
                runs.append(guarded(partial(memory, kind, plan, rep, log_dir),
                                    "fanout", kind, n, rep))
        if "heartbeat" in scenarios:
            for kind in rotated(kinds, rep):
                runs.append(guarded(partial(heartbeat, kind, plan, rep, log_dir),
                                    "heartbeat", kind, n, rep))
    return runs


def report(runs: list[Run], plan: Plan, kinds: Sequence[str], scenarios: Sequence[str]) -> str:
    n = plan.memory_clients
    parts: list[str] = []

    def med(scenario: str, kind: str, key: str) -> float | None:
        return median_of(runs, scenario, kind, n, key)

    if "memory" in scenarios:
        rows = []
        for kind in kinds:
            kb = med("fanout", kind, "kb_per_conn")
            connect = med("fanout", kind, "connect_us")
            fan = med("fanout", kind, "ms_per_1k")
            rows.append([kind, fmt(med("fanout", kind, "rss_empty_mb"), 1),
                         fmt(med("fanout", kind, "rss_full_mb"), 1), fmt(kb, 1),
                         ratio(kb, med("fanout", "raw", "kb_per_conn")), fmt(connect, 0),
                         ratio(connect, med("fanout", "raw", "connect_us")), fmt(fan),
                         ratio(fan, med("fanout", "raw", "ms_per_1k"))])
        parts.append(f"### Memory: RSS per idle connection at {n:,} (median)\n\n" + table(
            ["server", "RSS, 0 conns (MB)", f"RSS, {n:,} conns (MB)", "KB / conn", "vs raw",
             "connect: server CPU µs / conn", "vs raw",
             f"fan-out ({plan.fanout[0][1]} broadcasts): µs CPU / delivery", "vs raw"], rows))
    if "heartbeat" in scenarios:
        rows = []
        for kind in kinds:
            us = med("heartbeat", kind, "us_per_ping")
            pct = med("heartbeat", kind, "cpu_pct")
            rows.append([kind, fmt(pct, 1), ratio(pct, med("heartbeat", "seed", "cpu_pct")),
                         fmt(med("heartbeat", kind, "pings_per_conn_s")),
                         fmt(med("heartbeat", kind, "min_conn_pings_per_s")), fmt(us, 1),
                         ratio(us, med("heartbeat", "seed", "us_per_ping")),
                         fmt(med("heartbeat", kind, "closed_by_server"), 0)])
        parts.append(
            f"### Heartbeat: {n:,} idle clients, interval {plan.heartbeat_interval:g}s, timeout "
            f"{plan.heartbeat_timeout:g}s, {plan.heartbeat_window:g}s window (median)\n\n"
            + table(["server", "CPU % of a core", "vs seed", "pings / conn / s",
                     "slowest conn pings/s", "µs CPU / ping", "vs seed", "conns closed"], rows))
    rows = []
    if "memory" in scenarios:
        kb, raw_kb = med("fanout", "stabilizer", "kb_per_conn"), med("fanout", "raw", "kb_per_conn")
        ok = None if kb is None or raw_kb is None else kb <= 1.2 * raw_kb
        rows.append([f"memory per connection at {n:,} ≤ 1.2x raw",
                     f"stabilizer {fmt(kb, 1)} KB, raw {fmt(raw_kb, 1)} KB ({ratio(kb, raw_kb)});"
                     f" with Redis {fmt(med('fanout', 'stabilizer-redis', 'kb_per_conn'), 1)} KB",
                     "n/a" if ok is None else ("met" if ok else "not met")])
    if "heartbeat" in scenarios:
        us, seed_us = (med("heartbeat", "stabilizer", "us_per_ping"),
                       med("heartbeat", "seed", "us_per_ping"))
        pct, seed_pct = med("heartbeat", "stabilizer", "cpu_pct"), med("heartbeat", "seed",
                                                                        "cpu_pct")
        ok = None if us is None or seed_us is None else us <= 0.5 * seed_us
        rows.append([f"heartbeat CPU at {n:,} ≤ ½ of the seed's",
                     f"per ping {fmt(us, 1)} vs {fmt(seed_us, 1)} µs ({ratio(us, seed_us)}); "
                     f"% of a core {fmt(pct, 1)} vs {fmt(seed_pct, 1)} ({ratio(pct, seed_pct)}); "
                     f"raw per ping {ratio(med('heartbeat', 'raw', 'us_per_ping'), seed_us)}",
                     "n/a" if ok is None else ("met" if ok else "not met")])
    if rows:
        parts.append("### Against the targets\n\n" + table(["target", "measured here",
                                                              "verdict"], rows))
    parts += report_tail(runs, label=sized_label,
                         load_note="; for stabilizer-redis this includes its redis-server")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="2,000 connections, short windows, one repetition")
    parser.add_argument("--connections", type=int,
                        help="idle connections (default 10,000; quick: 2,000)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    connections = args.connections or (2000 if args.quick else 10000)
    plan = plan_for(connections, args.quick)
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in KINDS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown server or scenario: {unknown}")
    if "raw" not in kinds:
        kinds.insert(0, "raw")  # memory ratios are to raw
    if "heartbeat" in scenarios and "seed" not in kinds:
        kinds.insert(1, "seed")  # heartbeat ratios are to the seed

    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-scale-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot)}
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    try:
        runs = run_all(plan, kinds, scenarios, log_dir)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan, kinds, scenarios)
    out = args.out or RESULTS / f"scale-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.scale", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, uvicorn "
          f"{env['uvicorn']}; stabilizer at {env['stabilizer_commit']} (sha256 "
          f"{env['stabilizer_sha256']}); {connections:,} connections; total {elapsed:.0f}s\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
