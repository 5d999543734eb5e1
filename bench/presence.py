"""Presence (issue 12): ``python -m bench.presence``, one run, one report.

Usage::

    python -m bench.presence --quick     # small counts, one repetition: about 40 s
    python -m bench.presence             # 3 repetitions, medians and their range
    python -m bench.presence --scenarios storm --windows 0,0.05,0.2 --storm-clients 2000

Every measurement starts its own redis-server (``bench.support.RedisProc``), server
(uvicorn, ``bench/presence_servers.py``) and client processes, so the server's CPU (user +
system of its pid, psutil) is its own.

* ``joinleave``: ``joiners`` plain clients connect (``bench.loadgen``; Socket.IO: its
  WebSocket transport). The server joins them to one group one after the other, then makes
  them leave (``POST /bench/join``, ``/bench/leave``), after a warm-up of the same. Per
  join and per leave: server CPU, Redis CPU and wall time (the calls are sequential, so
  this is their latency). Variants: ``plain`` (a membership; Socket.IO ``enter_room`` /
  ``leave_room``; raw: one script of SADDs), ``meta`` (with presence metadata of about 40
  bytes: the change is published; Socket.IO has no presence: n/a), and, for the stabilizer,
  both again with ``followers`` v2 clients following the group's presence
  (``bench/presence_client.py``): the CPU then includes the diffs sent to them, measured
  until an observer's copy of the presence is exact and the followers' traffic stopped.
  Redis round trips per operation: the same operations for ``monitor_ops`` clients with
  ``redis-cli MONITOR`` on (not timed), counting top-level commands (a script is one
  EVALSHA, named after the Lua scripts of the code measured; commands inside it are not
  round trips); background commands (keepalive, sweep, PING) are left out.
* ``storm`` (stabilizer only: the others have no presence): ``storm_clients`` v2 clients
  (over ``storm_generators`` processes) subscribe to one channel with ``presence: true``,
  each listed with ``{"gen": 1}``; an observer (its own process) follows the presence too.
  Then every client drops at once (``transport.abort()``) and reconnects at once, listed
  with ``{"gen": 2}`` (no history: each drop is a leave, each reconnect a join). On the
  observer: the ``presence_diff`` frames from the drop until its copy lists exactly the
  clients with gen 2 (their number, mean and max size, frames per second) and that time;
  server CPU and Redis CPU from the drop until the clients' traffic stopped; frames and
  bytes to all clients. Once per ``presence_diff_window`` value (``windows``).

Figures are medians over the repetitions with their range. Every repetition goes to
``bench/results/presence-*.json``, the logs next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench._common import raise_nofile_limit
from bench.cluster import BACKGROUND, parse_monitor
from bench.core import (
    RESULTS,
    Run,
    describe_code,
    environment,
    fmt,
    guarded,
    log,
    report_tail,
    rotated,
    scenario_label,
    snapshot_stabilizer,
    table,
)
from bench.harness import (
    REPO,
    BenchError,
    Fleet,
    ForeignLoad,
    LoadGen,
    Server,
    free_port,
    install_cleanup,
    stop_all,
)
from bench.identity.common import med, spread
from bench.presence_servers import KINDS, RAW_CHANGE
from bench.presence_storm import (
    CLIENT,
    FULL,
    QUICK,
    Plan,
    ask,
    server_args,
    settle,
    storm_run,
    storm_table,
    v2_clients,
)
from bench.support import RedisProc, wait_idle

SCENARIOS: Final = ("joinleave", "storm")

def script_names(root: Path) -> dict[str, str]:
    """SHA1 of each Lua script of the Redis backend that `root`/stabilizer holds -> its name,
    read by a child interpreter (the controller imports no stabilizer)."""
    code = ("import hashlib, json, sys; sys.path.insert(0, sys.argv[1])\n"
            "import importlib, importlib.util\n"
            "names = {}\n"
            "for mod in ('scripts', 'liveness_scripts', 'stream_scripts', 'group_scripts',\n"
            "            'user_scripts'):\n"
            "    if importlib.util.find_spec('stabilizer.backends.redis.' + mod) is None:\n"
            "        continue  # (a tree from before that module split off)\n"
            "    m = importlib.import_module('stabilizer.backends.redis.' + mod)\n"
            "    for k, v in vars(m).items():\n"
            "        if k.isupper() and isinstance(v, str):\n"
            "            names[hashlib.sha1(v.encode()).hexdigest()] = k.lower()\n"
            "print(json.dumps(names))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode:
        raise BenchError(f"cannot read the Lua scripts under {root}: {done.stderr[-300:]}")
    names: dict[str, str] = json.loads(done.stdout)
    return names


# --------------------------------------------------------------------------- join / leave


def timed(server: Server, redis: RedisProc, path: str, n: int) -> dict[str, float]:
    """One request of n sequential operations: server CPU, Redis CPU, wall, per operation."""
    cpu0, redis0 = server.cpu_seconds(), redis.cpu_seconds()
    reply = server.request("POST", path)
    cpu1, redis1 = server.cpu_seconds(), redis.cpu_seconds()
    if reply["failed"] or reply["done"] != n:
        raise BenchError(f"{path}: {reply['failed']} failed of {reply['done']}, first: "
                         f"{reply['first_error']}")
    return {"us": (cpu1 - cpu0) / n * 1e6, "redis_us": (redis1 - redis0) / n * 1e6,
            "wall_us": reply["wall_s"] / n * 1e6}


def variants(kind: str) -> tuple[str, ...]:
    return ("plain",) if kind == "socketio" else ("plain", "meta")


def joinleave_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run("joinleave", kind, plan.joiners, rep)
    n = plan.joiners
    with RedisProc(log_dir) as redis, \
            Server(kind, free_port(), log_dir, module="bench.presence_servers",
                   extra_args=server_args(plan, redis)) as server, \
            Fleet(1, log_dir) as joiners:
        server.wait_ready()
        joiners.connect(server.port, n, mode="sio" if kind == "socketio" else "ws", prefix="j")
        if server.wait_count(n) != n:
            raise BenchError(f"the server does not count the {n} joiners")
        for meta in (0, 1):  # warm-up
            server.request("POST", f"/bench/join?n={plan.warmup}&meta={meta}")
            server.request("POST", f"/bench/leave?n={plan.warmup}")
        server.request("POST", "/bench/gc")
        foreign = ForeignLoad([server.pid, redis.pid, *joiners.pids])
        for variant in variants(kind):
            meta = int(variant == "meta")
            for op, path in (("join", f"/bench/join?n={n}&meta={meta}"),
                             ("leave", f"/bench/leave?n={n}")):
                for key, value in timed(server, redis, path, n).items():
                    run.values[f"{variant}_{op}_{key}"] = value
        run.values["foreign_pct"] = foreign.percent()
        round_trips(run, kind, plan, redis, server, log_dir)
        if kind == "stabilizer":
            with_followers(run, plan, redis, server, log_dir)
    return run


def round_trips(run: Run, kind: str, plan: Plan, redis: RedisProc, server: Server,
                log_dir: Path) -> None:
    """Top-level Redis commands per join and per leave, from MONITOR (not timed)."""
    scripts = (script_names(Path(plan.stabilizer_path or REPO)) if kind == "stabilizer"
               else {hashlib.sha1(RAW_CHANGE.encode()).hexdigest(): "raw_change"})
    m = plan.monitor_ops
    for variant in variants(kind):
        meta = int(variant == "meta")
        for op, path in (("join", f"/bench/join?n={m}&meta={meta}"),
                         ("leave", f"/bench/leave?n={m}")):
            monitor_path = log_dir / f"monitor-{kind}-{variant}-{op}-rep{run.rep}.log"
            monitor = redis.monitor(monitor_path)
            try:
                server.request("POST", path)
                time.sleep(0.2)  # MONITOR's output trails the commands a little
            finally:
                monitor.stop()
            found = {name: count for name, count in parse_monitor(monitor_path, scripts).items()
                     if name not in BACKGROUND}
            run.values[f"{variant}_{op}_rt"] = sum(found.values()) / m
            run.notes[f"{variant}_{op}_rt"] = {name: count / m for name, count in found.items()}


def with_followers(run: Run, plan: Plan, redis: RedisProc, server: Server,
                   log_dir: Path) -> None:
    """The stabilizer's joins and leaves again, `followers` v2 clients following the
    group's presence and an observer waiting for its copy to be exact after each phase."""
    n = plan.joiners
    followers = LoadGen(1, log_dir, module=CLIENT)
    observer = LoadGen(2, log_dir, module=CLIENT)
    try:
        v2_clients(observer, server.port, ["observer"], observer=True)
        v2_clients(followers, server.port, [f"f{i}" for i in range(plan.followers)],
                   listed=False)
        for variant in ("plain", "meta"):
            meta = int(variant == "meta")
            for op, path, listed in (("join", f"/bench/join?n={n}&meta={meta}", n * meta),
                                     ("leave", f"/bench/leave?n={n}", 0)):
                ask(observer, {"cmd": "arm", "gen": None, "n": listed})
                before = settle([followers])
                cpu0, redis0 = server.cpu_seconds(), redis.cpu_seconds()
                reply = server.request("POST", path)
                seen = ask(observer, {"cmd": "wait", "timeout": plan.exact_timeout},
                           plan.exact_timeout + 30)
                after = settle([followers])
                cpu1, redis1 = server.cpu_seconds(), redis.cpu_seconds()
                if reply["failed"] or not seen["exact"]:
                    raise BenchError(f"{path} with followers: {reply['failed']} failed; the "
                                     f"observer lists {seen['listed']}, expected {listed}")
                key = f"{variant}+followers_{op}"
                run.values[f"{key}_us"] = (cpu1 - cpu0) / n * 1e6
                run.values[f"{key}_redis_us"] = (redis1 - redis0) / n * 1e6
                run.values[f"{key}_wall_us"] = reply["wall_s"] / n * 1e6
                run.values[f"{key}_diffs"] = (after["diffs"] - before["diffs"]) / plan.followers
                run.values[f"{key}_diff_kb"] = (after["diff_bytes"] - before["diff_bytes"]
                                                ) / plan.followers / 1024
    finally:
        followers.stop(grace=3.0)
        observer.stop(grace=3.0)


# --------------------------------------------------------------------------- report


def report(runs: list[Run], plan: Plan, kinds: Sequence[str], scenarios: Sequence[str]) -> str:
    parts: list[str] = []
    if "joinleave" in scenarios:
        def cell(kind: str, key: str, digits: int = 0) -> list[str]:
            return [fmt(med(runs, "joinleave", kind, key), digits),
                    spread(runs, "joinleave", kind, key, digits)]

        rows = []
        for kind in kinds:
            names = [*variants(kind)] + (["plain+followers", "meta+followers"]
                                          if kind == "stabilizer" else [])
            for variant in names:
                rows.append([kind, variant, *cell(kind, f"{variant}_join_us"),
                             *cell(kind, f"{variant}_leave_us"),
                             fmt(med(runs, "joinleave", kind, f"{variant}_join_redis_us"), 0),
                             fmt(med(runs, "joinleave", kind, f"{variant}_leave_redis_us"), 0),
                             fmt(med(runs, "joinleave", kind, f"{variant}_join_rt"), 2),
                             fmt(med(runs, "joinleave", kind, f"{variant}_leave_rt"), 2),
                             fmt(med(runs, "joinleave", kind, f"{variant}_join_wall_us"), 0),
                             fmt(med(runs, "joinleave", kind, f"{variant}_join_diffs"), 1)])
        parts.append(
            f"### Join / leave: {plan.joiners:,} clients join one group one after the other, "
            f"then leave (followers: {plan.followers} v2 clients following its presence)\n\n"
            + table(["contender", "variant", "server CPU µs / join", "range",
                     "server CPU µs / leave", "range", "Redis CPU µs / join",
                     "Redis CPU µs / leave", "round trips / join", "round trips / leave",
                     "wall µs / join", "diff frames per follower"], rows))
        lines = []
        for run in runs:
            if run.scenario == "joinleave" and run.rep == 0 and not run.error:
                for key, found in sorted(run.notes.items()):
                    listing = ", ".join(f"{name} {count:g}" for name, count in found.items())
                    lines.append(f"- {run.kind} {key.removesuffix('_rt')}: {listing or 'none'}")
        if lines:
            parts.append("Round trips per operation (MONITOR, first repetition):\n\n"
                         + "\n".join(lines))
    if "storm" in scenarios:
        parts.append(storm_table(runs, plan))
    parts += report_tail(runs, label=scenario_label)
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.presence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(KINDS),
                        help=f"join/leave contenders, a subset of {','.join(KINDS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"a subset of {','.join(SCENARIOS)}")
    parser.add_argument("--windows", help="storm: presence_diff_window values, e.g. 0,0.05")
    parser.add_argument("--storm-clients", type=int, help="storm: clients (default: 1,000, "
                        "quick: 300)")
    parser.add_argument("--max-wait", type=float, help="seconds to wait for other benchmarks "
                        "or test runs to end before each measurement (default 1800)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"reps": args.reps, "max_wait": args.max_wait,
                               "storm_clients": args.storm_clients}
    if args.windows:
        changes["windows"] = tuple(float(w) for w in args.windows.split(","))
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in KINDS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown server or scenario: {unknown}")

    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-presence-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot)}
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    runs: list[Run] = []
    try:
        for rep in range(plan.reps):
            if "joinleave" in scenarios:
                for kind in rotated(kinds, rep):
                    runs.append(guarded(partial(joinleave_run, kind, plan, rep, log_dir),
                                        "joinleave", kind, plan.joiners, rep))
            if "storm" in scenarios:
                shift = rep % len(plan.windows)  # drift favours no window
                for window in plan.windows[shift:] + plan.windows[:shift]:
                    runs.append(guarded(partial(storm_run, window, plan, rep, log_dir),
                                        "storm", f"window {window:g}s", plan.storm_clients, rep))
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan, kinds, scenarios)
    out = args.out or RESULTS / f"presence-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.presence", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, uvicorn "
          f"{env['uvicorn']}, python-socketio {env['python-socketio']}; total "
          f"{elapsed:.0f}s\n{describe_code(env)}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
