"""Remote procedure calls (issue 12): ``python -m bench.rpc``, one run, one report.

Usage::

    python -m bench.rpc --quick     # small counts, one repetition: a smoke check (about 15 s)
    python -m bench.rpc             # full run: 3 repetitions, medians (about 2 min)
    python -m bench.rpc --servers raw,stabilizer --reps 5 --concurrency 32

Contenders (``bench/rpc_servers.py``, ``bench/rpc_client.py``), each a procedure ``add``
returning ``params["a"] + params["b"]``:

* ``raw``: a plain FastAPI endpoint answering ``{"id", "method", "params"}`` with ``{"id",
  "result"}`` in its receive loop, called by a minimal ``websockets`` client: the floor;
* ``stabilizer``: ``@manager.rpc("add")`` behind ``session(manager, websocket)`` (v2,
  anonymous, heartbeat off), called by ``stabilizer.client.connect(url, protocol=2)``'s
  ``conn.rpc``;
* ``socketio``: python-socketio's ``AsyncServer`` (ASGI), an ``add`` handler whose return
  value is the ack, called by ``socketio.AsyncClient().call`` over the WebSocket transport.

Every repetition of every contender starts its own server (uvicorn, the settings of
``bench.servers``) and its own client process, which holds one connection. After a
warm-up (``warmup_calls`` sequential and as many concurrent calls):

1. **Sequential**: ``serial_calls`` calls one after the other; each round trip is timed in
   the client from before the call to its result; p50, p99, mean. Server CPU (user +
   system of its pid, psutil) over the calls, per call; the client's own CPU per call.
2. **Concurrent**: ``concurrent_calls`` calls with ``concurrency`` in flight at any time
   (that many tasks in the one client, each calling in a loop): calls per second (wall
   time), server CPU per call (user / system too), client CPU per call.

Every call's result is checked; a run with a failed or wrong call fails. The contenders'
order rotates between repetitions; figures are medians over the repetitions with their
range, ratios to raw of the same run. Every repetition goes to
``bench/results/rpc-*.json``, the logs next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from bench._common import raise_nofile_limit
from bench.core import (
    RESULTS,
    Run,
    describe_code,
    environment,
    fmt,
    guarded,
    log,
    median_of,
    ratio,
    report_tail,
    rotated,
    snapshot_stabilizer,
    table,
)
from bench.harness import (
    REPO,
    BenchError,
    ForeignLoad,
    LoadGen,
    Server,
    free_port,
    install_cleanup,
    stop_all,
)
from bench.rpc_servers import KINDS
from bench.support import quantile, wait_idle

SCENARIO: Final = "rpc"
DEFAULT_RPC_MAX_IN_FLIGHT: Final = 16  # WebSocketConfig.rpc_max_in_flight's default


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    warmup_calls: int = 500
    serial_calls: int = 5000
    concurrent_calls: int = 30000
    concurrency: int = 16  # calls in flight from the one client
    call_timeout: float = 300.0  # for one command of the client (all its calls)
    max_wait: float = 1800.0  # for other CPU-heavy runs to end, before each measurement
    stabilizer_path: str | None = None


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, warmup_calls=200, serial_calls=2000, concurrent_calls=10000)


def server_args(kind: str, plan: Plan) -> list[str]:
    if kind != "stabilizer":
        return []
    args = []
    if plan.concurrency > DEFAULT_RPC_MAX_IN_FLIGHT:  # else its default already allows them
        args += ["--stabilizer-config", json.dumps({"rpc_max_in_flight": plan.concurrency})]
    if plan.stabilizer_path:
        args += ["--stabilizer-path", plan.stabilizer_path]
    return args


def ask(client: LoadGen, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one command to the client process; raise unless every call of it succeeded."""
    client.send(cmd)
    reply = client.reply(timeout)
    if reply.get("error"):
        raise BenchError(f"client: {reply['error']}")
    if reply.get("failed"):
        raise BenchError(f"{reply['failed']} of the calls failed, first: {reply['first_error']}")
    return reply


def rpc_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run(SCENARIO, kind, 1, rep)
    with Server(kind, free_port(), log_dir, module="bench.rpc_servers",
                extra_args=server_args(kind, plan)) as server:
        client = LoadGen(0, log_dir, module="bench.rpc_client")
        try:
            server.wait_ready()
            opened = ask(client, {"cmd": "connect", "kind": kind, "port": server.port,
                                  "stabilizer_path": plan.stabilizer_path}, 60.0)
            if not opened["connected"]:
                raise BenchError(f"the client did not connect: {opened['errors']}")
            if server.wait_count(1, timeout=10.0) != 1:
                raise BenchError("the server does not count the client")
            ask(client, {"cmd": "serial", "n": plan.warmup_calls}, plan.call_timeout)
            ask(client, {"cmd": "concurrent", "n": plan.warmup_calls,
                         "concurrency": plan.concurrency}, plan.call_timeout)
            server.request("POST", "/bench/gc")
            foreign = ForeignLoad([server.pid, client.pid])
            run.values.update(serial(server, client, plan))
            run.values.update(concurrent(server, client, plan))
            run.values["foreign_pct"] = foreign.percent()
            ask(client, {"cmd": "close"}, 30.0)
        finally:
            client.stop(grace=3.0)
    return run


def serial(server: Server, client: LoadGen, plan: Plan) -> dict[str, float]:
    n = plan.serial_calls
    cpu0 = server.cpu_seconds()
    reply = ask(client, {"cmd": "serial", "n": n}, plan.call_timeout)
    spent = server.cpu_seconds() - cpu0
    trips = sorted(reply["round_trip_us"])
    return {
        "serial_p50_us": quantile(trips, 0.5) or 0.0,
        "serial_p99_us": quantile(trips, 0.99) or 0.0,
        "serial_max_us": float(trips[-1]),
        "serial_mean_us": statistics.fmean(trips),
        "serial_server_us": spent / n * 1e6,
        "serial_client_us": reply["cpu_s"] / n * 1e6,
    }


def concurrent(server: Server, client: LoadGen, plan: Plan) -> dict[str, float]:
    n = plan.concurrent_calls
    user0, sys0 = server.cpu_split()
    reply = ask(client, {"cmd": "concurrent", "n": n, "concurrency": plan.concurrency},
                plan.call_timeout)
    user1, sys1 = server.cpu_split()
    return {
        "calls_per_s": n / reply["wall_s"],
        "server_us": (user1 - user0 + sys1 - sys0) / n * 1e6,
        "server_user_us": (user1 - user0) / n * 1e6,
        "server_sys_us": (sys1 - sys0) / n * 1e6,
        "client_us": reply["cpu_s"] / n * 1e6,
    }


# --------------------------------------------------------------------------- report


def med(runs: list[Run], kind: str, key: str) -> float | None:
    return median_of(runs, SCENARIO, kind, 1, key)


def spread(runs: list[Run], kind: str, key: str, digits: int = 0) -> str:
    """The range (min to max) of `key` over the repetitions; n/a for fewer than two."""
    values = [r.values[key] for r in runs
              if r.kind == kind and key in r.values and r.error is None]
    if len(values) < 2:
        return "n/a"
    return f"{min(values):,.{digits}f}–{max(values):,.{digits}f}"


def report(runs: list[Run], plan: Plan, kinds: Sequence[str]) -> str:
    def m(kind: str, key: str) -> float | None:
        return med(runs, kind, key)

    first, second = [], []
    for kind in kinds:
        first.append([
            kind, fmt(m(kind, "serial_p50_us"), 0), spread(runs, kind, "serial_p50_us"),
            ratio(m(kind, "serial_p50_us"), m("raw", "serial_p50_us")),
            fmt(m(kind, "serial_p99_us"), 0), spread(runs, kind, "serial_p99_us"),
            ratio(m(kind, "serial_p99_us"), m("raw", "serial_p99_us")),
            fmt(m(kind, "serial_mean_us"), 0),
            fmt(m(kind, "serial_server_us"), 0),
            ratio(m(kind, "serial_server_us"), m("raw", "serial_server_us")),
            fmt(m(kind, "serial_client_us"), 0)])
        second.append([
            kind, fmt(m(kind, "calls_per_s"), 0), spread(runs, kind, "calls_per_s"),
            ratio(m(kind, "calls_per_s"), m("raw", "calls_per_s")),
            fmt(m(kind, "server_us"), 0), spread(runs, kind, "server_us"),
            ratio(m(kind, "server_us"), m("raw", "server_us")),
            f"{fmt(m(kind, 'server_user_us'), 0)} / {fmt(m(kind, 'server_sys_us'), 0)}",
            fmt(m(kind, "client_us"), 0),
            ratio(m(kind, "client_us"), m("raw", "client_us"))])
    parts = [
        f"### Sequential: {plan.serial_calls:,} calls one after the other, one client\n\n"
        + table(["contender", "p50 µs", "range", "vs raw", "p99 µs", "range", "vs raw",
                 "mean µs", "server CPU µs / call", "vs raw", "client CPU µs / call"], first),
        f"### Concurrent: {plan.concurrent_calls:,} calls, {plan.concurrency} in flight, "
        "one client\n\n"
        + table(["contender", "calls / s", "range", "vs raw", "server CPU µs / call",
                 "range", "vs raw", "user / sys µs", "client CPU µs / call", "vs raw"],
                second)]
    parts += report_tail(runs)
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Benchmark:
    """A one-node benchmark run by ``run_benchmark``: its plans, one measurement, the report.

    Its plans are dataclasses with ``reps``, ``concurrency``, ``max_wait`` and
    ``stabilizer_path`` fields (``bench.rpc``'s and ``bench.acks``').
    """

    name: str  # python -m bench.<name>; results/<name>-*.json
    doc: str
    kinds: Sequence[str]
    full: Any
    quick: Any
    measure: Callable[[str, Any, int, Path], Run]  # kind, plan, rep, log dir
    report: Callable[[list[Run], Any, Sequence[str]], str]  # runs, plan, kinds
    concurrency_help: str = "calls in flight (default 16)"


def parse(bench: Benchmark, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Any]:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{bench.name}",
                                     description=bench.doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(bench.kinds),
                        help=f"comma-separated subset of {','.join(bench.kinds)} (raw is "
                             "always measured)")
    parser.add_argument("--concurrency", type=int, help=bench.concurrency_help)
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait for other benchmarks or test runs to end "
                             "before each measurement (default 1800; then measure anyway)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    plan = bench.quick if args.quick else bench.full
    changes: dict[str, Any] = {"reps": args.reps, "concurrency": args.concurrency,
                               "max_wait": args.max_wait}
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})
    args.servers = ["raw", *[k.strip() for k in args.servers.split(",")
                             if k.strip() not in ("", "raw")]]
    unknown = [k for k in args.servers if k not in bench.kinds]
    if unknown:
        parser.error(f"unknown server: {unknown}")
    return args, plan


def run_benchmark(bench: Benchmark, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, measure every contender in every repetition, report."""
    args, plan = parse(bench, argv)
    kinds: list[str] = args.servers
    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-{bench.name}-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot),
           "aiohttp": package_version("aiohttp")}
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    runs: list[Run] = []
    try:
        for rep in range(plan.reps):
            for kind in rotated(kinds, rep):  # drift favours no contender
                runs.append(guarded(partial(bench.measure, kind, plan, rep, log_dir),
                                    bench.name, kind, 1, rep))
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = bench.report(runs, plan, kinds)
    out = args.out or RESULTS / f"{bench.name}-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join([f"python -m bench.{bench.name}", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, uvicorn "
          f"{env['uvicorn']}, websockets {env['websockets']}, python-socketio "
          f"{env['python-socketio']} / engine.io {env['python-engineio']}, aiohttp "
          f"{env['aiohttp']}; total {elapsed:.0f}s\n{describe_code(env)}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


def package_version(name: str) -> str:
    """The installed version of distribution `name`, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


RPC: Final = Benchmark(SCENARIO, __doc__ or "", KINDS, FULL, QUICK, rpc_run, report)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(RPC, argv)


if __name__ == "__main__":
    sys.exit(main())
