"""100,000 connections on one replica: memory, connect, heartbeat at the default interval, and
one broadcast to all of them (issue 15, item 5).

Usage::

    python -m bench.hundredk                     # 100,000 connections, raw, seed, stabilizer
    python -m bench.hundredk --reps 3            # the same, three repetitions, with spreads
    python -m bench.hundredk --connections 18000 --heartbeat-interval 5   # a harness check

One measurement per server and repetition, in a fresh server process with fresh load
generators (``bench.loadgen``), in this order:

* connect: N clients (wall time until the server counts them all, server CPU per connect),
  their sockets bound in turn to several loopback source addresses (``--sources``; by
  default enough for 80% of ip_local_port_range each: 5 for 100,000 with Linux's default
  28,232 ports), so that N is not capped by one address's ports; every measurement uses
  addresses of its own, as the previous one's closed sockets keep theirs in TIME_WAIT for
  a minute;
* memory: RSS with N clients minus RSS with none, after ``gc.collect()``, per connection;
* heartbeat: at the library's default interval (``WebSocketConfig().heartbeat_interval``,
  30 s; timeout 60 s) for every server, over a window of at least one interval (default
  three: raw and the seed ping every interval + the time a round takes, so a window holds
  one round more or less for some clients): CPU % of a core, CPU per ping, pings per
  connection per interval, connections closed;
* broadcast: two broadcasts of one 64-byte message to all N, one after the other (the
  first touches every socket's send path for the first time), each started when the
  heartbeat is calm: after a round of pings, once the server has read the pongs (raw and
  the seed ping everybody at once), and when the server's CPU over half a second is at
  most 1.5 times its heartbeat average + 5 points (at most one interval + 10 s later).
  Wall time runs from the request until the last client received the message (the
  generators' CLOCK_MONOTONIC stamp of the last broadcast frame); server CPU from before
  the request until every client counted it. The heartbeat keeps running meanwhile: the
  pings counted in that window, at the CPU per ping measured just before, are subtracted
  (``net``); both the raw and the net figures are recorded. That is exact for raw (its
  pings are all its heartbeat costs) and for the stabilizer (one heap schedule), not for
  the seed, whose heartbeat also wakes one task per ping ``timeout`` seconds later: those
  stay in its figures.
  Delivered must equal N, or the run reports the loss.

Connections per core: one replica is one process with one event loop, so the N it holds
are held on one core; the heartbeat's share of that core and the N at which one ping per
connection per interval would fill it (at the CPU per ping measured) are reported next to
Phoenix's 50,000 per core (2 million on 40).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
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
    guarded,
    log,
    rotated,
    snapshot_stabilizer,
)
from bench.harness import REPO, BenchError, install_cleanup, stop_all
from bench.hundredk_limits import (
    PORT_SHARE,
    check_nofile,
    generators_needed,
    port_range,
    sources_needed,
)
from bench.hundredk_report import report
from bench.hundredk_steps import Settings, hundredk_run
from bench.support import RedisProc, wait_idle

KINDS: Final = ("raw", "seed", "stabilizer", "stabilizer-redis", "socketio")
DEFAULT_KINDS: Final = ("raw", "seed", "stabilizer")


def measured(kind: str, settings: Settings, rep: int, measurement: int, log_dir: Path,
             idle_wait: bool) -> Run:
    """One measurement of `kind`; stabilizer-redis gets a redis-server of its own."""
    if idle_wait:
        wait_idle(log)
    if kind != "stabilizer-redis":
        return hundredk_run(kind, settings.core, settings, rep, measurement, log_dir)
    with RedisProc(log_dir) as redis:
        config = json.loads(settings.core.stabilizer_config or "{}")
        config["redis_url"] = redis.url
        plan = replace(settings.core, stabilizer_config=json.dumps(config))
        cpu_before = redis.cpu_seconds()
        run = hundredk_run("stabilizer", plan, settings, rep, measurement, log_dir)
        run.kind = kind
        run.values["redis_cpu_s_whole_run"] = redis.cpu_seconds() - cpu_before
    return run


def run_all(settings: Settings, kinds: Sequence[str], log_dir: Path,
            idle_wait: bool = True) -> list[Run]:
    runs: list[Run] = []
    # Source addresses from the clock: the sockets a run just before this one closed keep
    # their ports in TIME_WAIT for a minute, on addresses a new run must not reuse.
    measurement = int(time.time())
    for rep in range(settings.core.reps):
        for kind in rotated(kinds, rep):
            measurement += 1
            runs.append(guarded(
                partial(measured, kind, settings, rep, measurement, log_dir, idle_wait),
                "100k", kind, settings.connections, rep))
    return runs


def default_interval() -> tuple[float, float]:
    """The library's default heartbeat interval and timeout."""
    from stabilizer import WebSocketConfig

    config = WebSocketConfig()
    return config.heartbeat_interval, config.heartbeat_timeout


def settings_from(args: argparse.Namespace, nofile: int) -> Settings:
    interval, timeout = default_interval()
    interval = args.heartbeat_interval or interval
    if args.heartbeat_interval:
        timeout = 2 * interval
    window = args.heartbeat_window or 3 * interval
    n = args.connections
    ports = port_range()
    sources = args.sources or sources_needed(n, ports)
    core = Plan(
        fanout=((n, 1),), memory_clients=n, message_size=64, heartbeat_clients=n,
        heartbeat_interval=interval, heartbeat_timeout=timeout, heartbeat_settle=0.0,
        heartbeat_window=window, reps=args.reps,
        generators=args.generators or generators_needed(n, nofile),
        delivery_timeout=max(60.0, n / 500), stabilizer_config=args.stabilizer_config)
    return Settings(core=core, connections=n, sources=sources,
                    concurrency=args.concurrency, quiet_wait=interval + 10.0)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.hundredk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument("--servers", default=",".join(DEFAULT_KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)} (raw is always in)")
    parser.add_argument("--heartbeat-interval", type=float,
                        help="seconds (default: the library's, 30; the timeout is twice it)")
    parser.add_argument("--heartbeat-window", type=float,
                        help="seconds measured, at least one interval (default: three)")
    parser.add_argument("--generators", type=int, help="load generators (default: auto)")
    parser.add_argument("--sources", type=int,
                        help="loopback source addresses per measurement (default: enough for "
                             f"{PORT_SHARE:.0%}% of the ephemeral port range each)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connects in flight per generator (default 64)")
    parser.add_argument("--stabilizer-config", metavar="JSON",
                        help="extra WebSocketConfig fields for the stabilizer server")
    parser.add_argument("--no-idle-wait", action="store_true",
                        help="measure at once, even while tests or other benchmarks run")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown server: {unknown}")
    if "raw" not in kinds:
        kinds.insert(0, "raw")  # every ratio is to raw
    for kind, module, package in (("seed", "fastapi_websocket_stabilizer",
                                   "fastapi-websocket-stabilizer==1.1.0"),
                                  ("socketio", "socketio", "python-socketio")):
        if kind in kinds and importlib.util.find_spec(module) is None:
            parser.error(f"--servers {kind} needs {package}: pip install {package}")
    if args.connections < 1 or args.reps < 1 or args.concurrency < 1:
        parser.error("--connections, --reps and --concurrency must be positive")
    interval = args.heartbeat_interval or default_interval()[0]
    if args.heartbeat_window is not None and args.heartbeat_window < interval:
        parser.error(f"--heartbeat-window must cover one interval ({interval:g}s)")
    if args.sources is not None and not 1 <= args.sources <= 250:
        parser.error("--sources must be 1 to 250")
    if args.stabilizer_config and not isinstance(json.loads(args.stabilizer_config), dict):
        parser.error("--stabilizer-config must be a JSON object")
    return args, kinds


def main(argv: Sequence[str] | None = None) -> int:
    args, kinds = parse(argv)
    nofile = raise_nofile_limit()
    settings = settings_from(args, nofile)
    try:
        check_nofile(settings.connections, nofile)
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 2
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-hundredk-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), "nofile": nofile,
           "ip_local_port_range": port_range()}
    settings = replace(settings, core=replace(settings.core, stabilizer_path=str(snapshot)))
    log(f"environment: {json.dumps(env)}")
    log(f"{settings.connections:,} connections from {settings.core.generators} generators "
        f"over {settings.sources} source addresses; heartbeat "
        f"{settings.core.heartbeat_interval:g}s, window {settings.core.heartbeat_window:g}s")
    gc.collect()
    started = time.monotonic()
    try:
        runs = run_all(settings, kinds, log_dir, idle_wait=not args.no_idle_wait)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, settings.connections, settings.core, kinds)
    out = args.out or RESULTS / f"hundredk-{settings.connections}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "settings": asdict(settings),
        "command": " ".join(["python -m bench.hundredk", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, {env['memory_gb']} GB, Python "
          f"{env['python']}, uvicorn {env['uvicorn']}; stabilizer at {env['stabilizer_commit']}"
          f" (sha256 {env['stabilizer_sha256']}); RLIMIT_NOFILE {nofile}; total "
          f"{elapsed:.0f}s\n")
    print(text)
    with contextlib.suppress(ValueError):
        out = out.relative_to(REPO)
    print(f"\nAll repetitions: {out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
