"""Emitter throughput (issue 13): messages from ONE worker process to clients of a replica.

Usage::

    python -m bench.emitter --quick   # small counts, one repetition: about a minute
    python -m bench.emitter           # 3 repetitions, medians and their range

Contenders, each a worker process (``python -m bench.emitter_worker``, no socket, no HTTP:
a Celery or arq worker's place) and one replica B of the same kind (``python -m
bench.replicas``, uvicorn) on one redis-server started for the measurement:

* ``stabilizer``: ``stabilizer.Emitter(redis_url).send_to_client(cid, text)``; B is a
  stabilizer replica (``WebSocketConnectionManager`` with the Redis backend);
* ``socketio``: python-socketio's ``AsyncRedisManager(redis_url, write_only=True)
  .emit("msg", text, room=cid)``; B is an ``AsyncServer`` (ASGI, under uvicorn) with an
  ``AsyncRedisManager`` client manager, every client in a room named after its id;
* ``raw`` (the floor): redis-py ``PUBLISH raw:n:B`` straight to B's channel (the worker is
  told which replica holds the client: no lookup); B, a plain FastAPI app, forwards with
  ``await ws.send_text(text)``.

C clients connect to B (two ``bench.probe`` load generators). After a warm-up, the worker
sends direct messages round-robin over the clients:

1. at a fixed rate (one sender task, message i due at start + i/rate): delivery latency;
2. as fast as it can, from 1, 16 and 64 sender tasks (each awaits its call before its
   next): messages emitted per second (messages / time the calls took), delivered per
   second (messages counted at the clients / (last arrival - first send)), latency, loss,
   and the CPU of the worker, B and Redis over the window.

Latency is the client's parse time minus the ``time.monotonic_ns()`` stamp the worker wrote
into the message just before the library call (CLOCK_MONOTONIC is one clock for every
process here); it includes the generator's own wake-up. A message not counted after
stall_timeout seconds without progress is lost. Each repetition of each contender starts
its own processes; the contenders' order rotates between repetitions; figures are medians
over the repetitions with their range; every repetition goes to
``bench/results/emitter-*.json``, the logs next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Final

import psutil

from bench._common import raise_nofile_limit
from bench.cluster import (
    Cpu,
    client_paths,
    connect,
    delivered,
    lat_values,
    latencies,
    reset_latencies,
    wait_delivered,
    wait_presence,
)
from bench.core import (
    RESULTS,
    Run,
    describe_code,
    environment,
    fmt,
    guarded,
    log,
    ratio,
    report_tail,
    rotated,
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
from bench.identity.common import med, spread, worst
from bench.support import RedisProc, wait_idle

CONTENDERS: Final = ("raw", "socketio", "stabilizer")
CALLS: Final = {"raw": "PUBLISH raw:n:B",
                "socketio": "AsyncRedisManager(write_only=True).emit(room=cid)",
                "stabilizer": "Emitter.send_to_client"}
SCENARIO: Final = "emit"
WORKER_INDEX: Final = 99  # its log: loadgen-99.log, beside the generators' 0 and 1


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    clients: int = 200
    latency_messages: int = 5000
    latency_rate: float = 1000.0
    throughput_messages: int = 10000
    throughput_senders: tuple[int, ...] = (1, 16, 64)
    message_size: int = 64
    delivery_timeout: float = 120.0  # (bench.cluster.wait_delivered reads these two)
    stall_timeout: float = 10.0
    max_wait: float = 1800.0  # for other CPU-heavy runs to end, before each measurement
    stabilizer_path: str | None = None


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, clients=100, latency_messages=1000, throughput_messages=3000,
                    throughput_senders=(1, 16), delivery_timeout=60.0)


def replica(kind: str, redis: RedisProc, plan: Plan, log_dir: Path) -> Server:
    args = ["--name", "B", "--redis-url", redis.url]
    if kind == "stabilizer" and plan.stabilizer_path:
        args += ["--stabilizer-path", plan.stabilizer_path]
    return Server(kind, free_port(), log_dir, module="bench.replicas", name="B",
                  extra_args=args)


def worker(kind: str, redis: RedisProc, plan: Plan, log_dir: Path) -> LoadGen:
    """The emitting worker process, its emitter made (and not yet connected: the warm-up
    does that)."""
    child = LoadGen(WORKER_INDEX, log_dir, module="bench.emitter_worker")
    try:
        child.send({"cmd": "open", "kind": kind, "redis_url": redis.url,
                    "stabilizer_path": plan.stabilizer_path if kind == "stabilizer" else None})
        reply = child.reply(60.0)
        if reply.get("opened") != kind:
            raise BenchError(f"the {kind} worker did not open: {reply}")
    except BaseException:
        child.stop()
        raise
    return child


def send(child: LoadGen, spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    child.send({"cmd": "send", **spec})
    reply = child.reply(timeout)
    if "t0_ns" not in reply:
        raise BenchError(f"the worker did not send: {reply}")
    return reply


def emit_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    run = Run(SCENARIO, kind, plan.clients, rep)
    run.values["waited_s"] = wait_idle(log, plan.max_wait)
    size = plan.message_size
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProc(log_dir))
        b = stack.enter_context(replica(kind, redis, plan, log_dir))
        fleet = stack.enter_context(Fleet(2, log_dir, module="bench.probe"))
        b.wait_ready()
        emitter = worker(kind, redis, plan, log_dir)
        stack.callback(emitter.stop)
        ids = [f"b{i}" for i in range(1, plan.clients + 1)]
        connect(fleet, [0, 1], b.port, kind, client_paths(kind, ids))
        if b.wait_count(len(ids)) != len(ids):
            raise BenchError("clients not registered on B")
        run.values["presence_lag_s"] = wait_presence(b, len(ids))
        targets = [[cid, "B"] for cid in ids]
        pids = [redis.pid, b.pid, emitter.pid, *fleet.pids]
        emitter_cpu = psutil.Process(emitter.pid)

        def worker_cpu() -> float:
            times = emitter_cpu.cpu_times()
            return float(times.user + times.system)

        base = delivered(fleet)  # warm-up: the worker connects, every client once
        warm = max(300, len(ids))
        send(emitter, {"mode": "direct", "n": warm, "rate": 3000, "targets": targets,
                       "size": size})
        if wait_delivered(fleet, base + warm, plan) < base + warm:
            raise BenchError("warm-up messages were lost")
        reset_latencies(fleet)

        # 1. at a fixed rate
        n = plan.latency_messages
        base = delivered(fleet)
        foreign = ForeignLoad(pids)
        cpu = Cpu(w=worker_cpu, b=b.cpu_seconds, redis=redis.cpu_seconds)
        reply = send(emitter, {"mode": "direct", "n": n, "rate": plan.latency_rate,
                               "targets": targets, "size": size})
        got = wait_delivered(fleet, base + n, plan) - base
        spent = cpu.spent()
        lat, _ = latencies(fleet)
        run.values.update(lat_values("rate", lat))
        run.values.update({
            "rate_lost": n - got, "rate_failed": reply["failed"],
            "rate_sent_per_s": n / ((reply["t1_ns"] - reply["t0_ns"]) / 1e9),
            "rate_w_us": spent["w"] / n * 1e6, "rate_b_us": spent["b"] / max(got, 1) * 1e6,
            "rate_redis_us": spent["redis"] / n * 1e6, "foreign_pct_rate": foreign.percent(),
        })

        # 2. as fast as the worker can
        for senders in plan.throughput_senders:
            n = plan.throughput_messages
            base = delivered(fleet)
            reset_latencies(fleet)
            foreign = ForeignLoad(pids)
            cpu = Cpu(w=worker_cpu, b=b.cpu_seconds, redis=redis.cpu_seconds)
            reply = send(emitter, {"mode": "direct", "n": n, "rate": 0,
                                   "concurrency": senders, "targets": targets, "size": size})
            got = wait_delivered(fleet, base + n, plan) - base
            spent = cpu.spent()
            lat, last_ns = latencies(fleet)
            span = (max(last_ns, reply["t1_ns"]) - reply["t0_ns"]) / 1e9
            key = f"tput{senders}"
            run.values.update(lat_values(key, lat))
            run.values.update({
                f"{key}_sent_per_s": n / ((reply["t1_ns"] - reply["t0_ns"]) / 1e9),
                f"{key}_delivered_per_s": got / span,
                f"{key}_lost": n - got, f"{key}_failed": reply["failed"],
                f"{key}_w_cpu_pct": spent["w"] / span * 100,
                f"{key}_b_cpu_pct": spent["b"] / span * 100,
                f"{key}_redis_cpu_pct": spent["redis"] / span * 100,
                f"foreign_pct_{key}": foreign.percent(),
            })
    run.values["foreign_pct"] = max(v for k, v in run.values.items()
                                    if k.startswith("foreign_pct_"))
    return run


# --------------------------------------------------------------------------- report


def report(runs: list[Run], plan: Plan, kinds: Sequence[str]) -> str:
    def m(kind: str, key: str) -> float | None:
        return med(runs, SCENARIO, kind, key)

    def rng(kind: str, key: str, digits: int = 0) -> str:
        return spread(runs, SCENARIO, kind, key, digits)

    parts = []
    rows = [[kind, f"`{CALLS[kind]}`", fmt(m(kind, "rate_p50_ms")), fmt(m(kind, "rate_p99_ms")),
             rng(kind, "rate_p99_ms", 2), ratio(m(kind, "rate_p99_ms"), m("raw", "rate_p99_ms")),
             fmt(m(kind, "rate_max_ms")), fmt(worst(runs, SCENARIO, kind, "rate_lost"), 0),
             fmt(m(kind, "rate_w_us"), 0), fmt(m(kind, "rate_b_us"), 0),
             fmt(m(kind, "rate_redis_us"), 0)] for kind in kinds]
    parts.append(
        f"### Direct messages at {plan.latency_rate:,.0f}/s from one worker process "
        f"({plan.latency_messages:,} messages, one sender task, {plan.clients:,} clients on "
        "B)\n\n" + table(
            ["contender", "call in the worker", "p50 ms", "p99 ms", "p99 range", "p99 vs raw",
             "max ms", "lost (worst rep)", "worker CPU µs/msg", "B CPU µs/msg",
             "Redis CPU µs/msg"], rows))
    rows = []
    for senders in plan.throughput_senders:
        key = f"tput{senders}"
        for kind in kinds:
            rows.append([
                kind, str(senders), fmt(m(kind, f"{key}_sent_per_s"), 0),
                rng(kind, f"{key}_sent_per_s"),
                ratio(m(kind, f"{key}_sent_per_s"), m("raw", f"{key}_sent_per_s")),
                fmt(m(kind, f"{key}_delivered_per_s"), 0),
                rng(kind, f"{key}_delivered_per_s"),
                fmt(worst(runs, SCENARIO, kind, f"{key}_lost"), 0),
                fmt(m(kind, f"{key}_p50_ms")), fmt(m(kind, f"{key}_p99_ms")),
                rng(kind, f"{key}_p99_ms", 2),
                fmt(m(kind, f"{key}_w_cpu_pct"), 0), fmt(m(kind, f"{key}_b_cpu_pct"), 0),
                fmt(m(kind, f"{key}_redis_cpu_pct"), 0)])
    parts.append(
        f"### Direct messages as fast as one worker process emits ({plan.throughput_messages:,}"
        " messages)\n\n" + table(
            ["contender", "sender tasks", "emitted/s", "range", "vs raw", "delivered/s",
             "range", "lost (worst rep)", "latency p50 ms", "p99 ms", "p99 range",
             "worker CPU %", "B CPU %", "Redis CPU %"], rows))
    lags = [f"{r.kind} {r.values['presence_lag_s']:.1f}s" for r in runs
            if r.values.get("presence_lag_s", 0) > 0.2]
    if lags:
        parts.append("Clients missing from Redis presence after connecting: waited "
                     + ", ".join(lags) + ".")
    waited = [r.values["waited_s"] for r in runs if r.values.get("waited_s", 0) >= 1]
    if waited:
        parts.append(f"Waited for other benchmarks or test runs to end: {sum(waited):.0f}s "
                     f"before {len(waited)} of {len(runs)} measurements.")
    parts += report_tail(runs)
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emitter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait for other benchmarks or test runs to end "
                             "before each measurement (default 1800; then measure anyway)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if args.max_wait is not None:
        plan = replace(plan, max_wait=args.max_wait)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if [k for k in kinds if k not in CONTENDERS]:
        parser.error(f"unknown contender in {kinds}; choose from {CONTENDERS}")
    if "socketio" in kinds and not _version("python-socketio")[0].isdigit():
        parser.error("the socketio contender needs python-socketio: "
                     "pip install python-socketio (or --servers raw,stabilizer)")

    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-emitter-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), "redis-py": _version("redis")}
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    runs: list[Run] = []
    try:
        for rep in range(plan.reps):
            for kind in rotated(kinds, rep):
                runs.append(guarded(partial(emit_run, kind, plan, rep, log_dir), SCENARIO,
                                    kind, plan.clients, rep))
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan, kinds)
    out = args.out or RESULTS / f"emitter-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.emitter", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, redis-py "
          f"{env['redis-py']}, python-socketio {env['python-socketio']}; total "
          f"{elapsed:.0f}s\n{describe_code(env)}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
