"""Acknowledged direct sends (issue 12): ``python -m bench.acks``, one run, one report.

Usage::

    python -m bench.acks --quick     # small counts, one repetition: about a minute
    python -m bench.acks             # 3 repetitions, medians and their range
    python -m bench.acks --servers raw,stabilizer --reps 5 --concurrency 32

Contenders (``bench/acks_servers.py``, ``bench/acks_client.py``), each a server sending
direct messages to one client of its own library, plainly or asking for an
acknowledgement:

* ``raw``: a plain FastAPI endpoint sends ``{"id", "data"}`` and awaits a future its
  receive loop settles when the ``websockets`` client answers ``{"ack": id}``: the floor;
* ``stabilizer``: ``manager.send_to_client(cid, m)`` and ``send_to_client(cid, m,
  ack=True)`` to ``stabilizer.client.connect(url, protocol=2)``, which acknowledges when
  the application asks for the next message (one node, embedded backend, heartbeat off);
* ``socketio``: python-socketio's ``sio.emit(event, m, to=sid)`` and ``await
  sio.call(event, m, to=sid)`` to an ``AsyncClient`` whose handler returns True (the ack).

Every repetition of every contender starts its own server (uvicorn, the settings of
``bench.servers``) and its own client process, which holds one connection. The server
drives: each phase is one request to it (``POST /bench/...``) that runs the sends against
the client and reports what it measured itself. After a warm-up (``warmup`` messages of
each phase):

1. **One-way, plain**: ``oneway_messages`` plain sends, ``gap_ms`` apart; the latency of
   each is the client's handling time minus the stamp the server wrote into the message
   just before the send call (one clock, CLOCK_MONOTONIC): p50, p99.
2. **Acknowledged, one at a time**: ``serial_sends`` acknowledged sends one after the
   other; the server times each from before the send call to its return: p50, p99, mean.
3. **Acknowledged, concurrent**: ``concurrent_sends`` acknowledged sends with
   ``concurrency`` in flight at any time (that many tasks under ``asyncio.gather``):
   acknowledged sends per second (wall time).

In every phase: server and client CPU (user + system of their pids, psutil) per message,
and a check that every send succeeded and the client handled exactly the messages sent.
The contenders' order rotates between repetitions; figures are medians over the
repetitions with their range, ratios to raw of the same run. Every repetition goes to
``bench/results/acks-*.json``, the logs next to it.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from bench.acks_servers import KINDS
from bench.core import Run, fmt, log, ratio, report_tail, table
from bench.harness import BenchError, ForeignLoad, LoadGen, Server, free_port
from bench.identity.common import med, spread
from bench.rpc import Benchmark, ask, run_benchmark
from bench.support import quantile, wait_idle

SCENARIO: Final = "acks"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    warmup: int = 500  # messages of each phase before measuring
    oneway_messages: int = 3000
    gap_ms: float = 1.0  # between two plain sends: a latency, not a queue
    serial_sends: int = 5000
    concurrent_sends: int = 30000
    concurrency: int = 16  # acknowledged sends in flight on the server
    phase_timeout: float = 300.0  # for one phase (all its sends)
    max_wait: float = 1800.0  # for other CPU-heavy runs to end, before each measurement
    stabilizer_path: str | None = None


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, warmup=200, oneway_messages=1500, serial_sends=2000,
                    concurrent_sends=10000)


@dataclass
class Phase:
    """What one phase measured: the server's reply and CPU seconds of both ends."""

    reply: dict[str, Any]
    latency_us: list[int]
    server_user_s: float
    server_sys_s: float
    client_s: float

    def per_message_us(self, n: int) -> dict[str, float]:
        return {"server_us": (self.server_user_s + self.server_sys_s) / n * 1e6,
                "server_user_us": self.server_user_s / n * 1e6,
                "server_sys_us": self.server_sys_s / n * 1e6,
                "client_us": self.client_s / n * 1e6}


def phase(server: Server, client: LoadGen, path: str, n: int, plan: Plan, *,
          latencies: bool = False) -> Phase:
    """Run one phase on the server; raise unless every send succeeded and the client handled
    exactly the n messages sent."""
    ps = psutil.Process(client.pid)
    user0, sys0 = server.cpu_split()
    client0 = sum(ps.cpu_times()[:2])
    reply = server.request("POST", path, timeout=plan.phase_timeout)
    user1, sys1 = server.cpu_split()
    seen = ask(client, {"cmd": "take", "n": n, "timeout": 30.0, "latencies": latencies}, 60.0)
    client1 = sum(ps.cpu_times()[:2])
    if reply.get("failed"):
        raise BenchError(f"{path}: {reply['failed']} of {n} sends failed, first: "
                         f"{reply['first_error']}")
    if not seen["complete"]:
        raise BenchError(f"{path}: the client handled {seen['count']} messages, not exactly "
                         f"the {n} sent")
    return Phase(reply, seen.get("latency_us", []), user1 - user0, sys1 - sys0,
                 client1 - client0)


def acks_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run(SCENARIO, kind, 1, rep)
    extra = ["--stabilizer-path", plan.stabilizer_path] if plan.stabilizer_path else []
    with Server(kind, free_port(), log_dir, module="bench.acks_servers",
                extra_args=extra) as server:
        client = LoadGen(0, log_dir, module="bench.acks_client")
        try:
            server.wait_ready()
            opened = ask(client, {"cmd": "connect", "kind": kind, "port": server.port,
                                  "stabilizer_path": plan.stabilizer_path}, 60.0)
            if not opened["connected"]:
                raise BenchError(f"the client did not connect: {opened['errors']}")
            if server.wait_count(1, timeout=10.0) != 1:
                raise BenchError("the server does not count the client")
            for path in oneway_path(plan, plan.warmup), f"/bench/acked?n={plan.warmup}", \
                    concurrent_path(plan, plan.warmup):
                phase(server, client, path, plan.warmup, plan)
            server.request("POST", "/bench/gc")
            foreign = ForeignLoad([server.pid, client.pid])
            run.values.update(oneway(server, client, plan))
            run.values.update(serial(server, client, plan))
            run.values.update(concurrent(server, client, plan))
            run.values["foreign_pct"] = foreign.percent()
            ask(client, {"cmd": "close"}, 30.0)
        finally:
            client.stop(grace=3.0)
    return run


def oneway_path(plan: Plan, n: int) -> str:
    return f"/bench/oneway?n={n}&gap_ms={plan.gap_ms}"


def concurrent_path(plan: Plan, n: int) -> str:
    return f"/bench/acked_concurrent?n={n}&concurrency={plan.concurrency}"


def oneway(server: Server, client: LoadGen, plan: Plan) -> dict[str, float]:
    n = plan.oneway_messages
    done = phase(server, client, oneway_path(plan, n), n, plan, latencies=True)
    latencies = sorted(float(us) for us in done.latency_us)
    return {
        "oneway_p50_us": quantile(latencies, 0.5) or 0.0,
        "oneway_p99_us": quantile(latencies, 0.99) or 0.0,
        "oneway_max_us": float(latencies[-1]),
        **{f"oneway_{k}": v for k, v in done.per_message_us(n).items()},
    }


def serial(server: Server, client: LoadGen, plan: Plan) -> dict[str, float]:
    n = plan.serial_sends
    done = phase(server, client, f"/bench/acked?n={n}", n, plan)
    trips = sorted(done.reply["round_trip_us"])
    return {
        "serial_p50_us": quantile(trips, 0.5) or 0.0,
        "serial_p99_us": quantile(trips, 0.99) or 0.0,
        "serial_max_us": float(trips[-1]),
        "serial_mean_us": statistics.fmean(trips),
        **{f"serial_{k}": v for k, v in done.per_message_us(n).items()},
    }


def concurrent(server: Server, client: LoadGen, plan: Plan) -> dict[str, float]:
    n = plan.concurrent_sends
    done = phase(server, client, concurrent_path(plan, n), n, plan)
    return {"acked_per_s": n / done.reply["wall_s"],
            **{f"concurrent_{k}": v for k, v in done.per_message_us(n).items()}}


# --------------------------------------------------------------------------- report


def report(runs: list[Run], plan: Plan, kinds: Sequence[str]) -> str:
    def m(kind: str, key: str) -> float | None:
        return med(runs, SCENARIO, kind, key)

    def cells(kind: str, key: str) -> list[str]:
        """Median, range, ratio to raw."""
        return [fmt(m(kind, key), 0), spread(runs, SCENARIO, kind, key),
                ratio(m(kind, key), m("raw", key))]

    first, second, third = [], [], []
    for kind in kinds:
        first.append([kind, *cells(kind, "oneway_p50_us"), *cells(kind, "oneway_p99_us"),
                      *cells(kind, "oneway_server_us"), fmt(m(kind, "oneway_client_us"), 0)])
        second.append([kind, *cells(kind, "serial_p50_us"), *cells(kind, "serial_p99_us"),
                       fmt(m(kind, "serial_mean_us"), 0), *cells(kind, "serial_server_us"),
                       fmt(m(kind, "serial_client_us"), 0)])
        third.append([kind, *cells(kind, "acked_per_s"), *cells(kind, "concurrent_server_us"),
                      f"{fmt(m(kind, 'concurrent_server_user_us'), 0)} / "
                      f"{fmt(m(kind, 'concurrent_server_sys_us'), 0)}",
                      fmt(m(kind, "concurrent_client_us"), 0),
                      ratio(m(kind, "concurrent_client_us"), m("raw", "concurrent_client_us"))])
    parts = [
        f"### One-way, plain sends: {plan.oneway_messages:,} messages {plan.gap_ms:g} ms "
        "apart, server stamp to client handling\n\n"
        + table(["contender", "p50 µs", "range", "vs raw", "p99 µs", "range", "vs raw",
                 "server CPU µs / msg", "range", "vs raw", "client CPU µs / msg"], first),
        f"### Acknowledged, one at a time: {plan.serial_sends:,} sends, the server times each "
        "send to its acknowledgement\n\n"
        + table(["contender", "p50 µs", "range", "vs raw", "p99 µs", "range", "vs raw",
                 "mean µs", "server CPU µs / send", "range", "vs raw",
                 "client CPU µs / msg"], second),
        f"### Acknowledged, {plan.concurrency} in flight: {plan.concurrent_sends:,} sends\n\n"
        + table(["contender", "acked sends / s", "range", "vs raw", "server CPU µs / send",
                 "range", "vs raw", "user / sys µs", "client CPU µs / msg", "vs raw"],
                third)]
    parts += report_tail(runs)
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


ACKS: Final = Benchmark(SCENARIO, __doc__ or "", KINDS, FULL, QUICK, acks_run, report,
                        concurrency_help="acknowledged sends in flight (default 16)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(ACKS, argv)


if __name__ == "__main__":
    sys.exit(main())
