"""100,000 connections on one replica: memory, connect, heartbeat at the default interval, and
one broadcast to all of them (issue 15, item 5).

Usage::

    python -m bench.hundredk                     # 100,000 connections, raw, seed, stabilizer
    python -m bench.hundredk --reps 3            # the same, three repetitions, with spreads
    python -m bench.hundredk --connections 18000 --heartbeat-interval 5   # a harness check

One measurement per server and repetition, in a fresh server process with fresh load
generators (``bench.loadgen``), in this order:

* connect: N clients (wall time until the server counts them all, server CPU per connect),
  their sockets bound in turn to several loopback source addresses (``plan.sources``), so
  that N is not capped by one address's ephemeral ports; every measurement uses addresses
  of its own, as the previous one's closed sockets keep theirs in TIME_WAIT for a minute;
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
  Wall time runs from the
  request until the last client received the message (the generators' CLOCK_MONOTONIC
  stamp of the last broadcast frame); server CPU from before the request until every
  client counted it. The heartbeat keeps running meanwhile: the pings counted in that
  window, at the CPU per ping measured just before, are subtracted (``net``); both the raw
  and the net figures are recorded. That is exact for raw (its pings are all its heartbeat
  costs) and for the stabilizer (one heap schedule), not for the seed, whose heartbeat
  also wakes one task per ping ``timeout`` seconds later: those stay in its figures.
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
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Final

import psutil

from bench._common import raise_nofile_limit
from bench.core import (
    RESULTS,
    Plan,
    Run,
    app_kind,
    environment,
    guarded,
    log,
    mode_of,
    rotated,
    server_args,
    snapshot_stabilizer,
    wait_for,
    warm_up,
)
from bench.harness import (
    REPO,
    BenchError,
    Fleet,
    ForeignLoad,
    Server,
    free_port,
    install_cleanup,
    stop_all,
)
from bench.hundredk_report import report
from bench.support import RedisProc, wait_idle

KINDS: Final = ("raw", "seed", "stabilizer", "stabilizer-redis", "socketio")
DEFAULT_KINDS: Final = ("raw", "seed", "stabilizer")
#: Ephemeral ports of one source address we plan to use at most (others may hold some).
PORT_SHARE: Final = 0.8
#: File descriptors a process needs beyond its sockets (pipes, epoll, imports, logs).
FD_SPARE: Final = 256
CLIENTS_PER_GENERATOR: Final = 12_500
#: Servers whose heartbeat pings every client in one round per interval (bench/servers.py).
ROUND_PINGERS: Final = ("raw", "seed")


@dataclass(frozen=True)
class Settings:
    """One 100k run: the core plan (sizes the shared helpers read) and what only we need."""

    core: Plan
    connections: int
    sources: int  # source addresses per measurement
    concurrency: int  # connects in flight per generator
    quiet_wait: float  # at most this long for a calm heartbeat before a broadcast


def port_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range (first, last)."""
    try:
        first, last = path.read_text().split()
        return int(first), int(last)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def sources_needed(connections: int, ports: tuple[int, int]) -> int:
    """Loopback source addresses so that no address uses more than PORT_SHARE of its ports."""
    per_source = int((ports[1] - ports[0] + 1) * PORT_SHARE)
    return max(1, math.ceil(connections / max(per_source, 1)))


def source_addresses(count: int, measurement: int) -> list[str]:
    """`count` loopback addresses for one measurement: 127.A.B.1 to 127.A.B.count, with A.B
    taken from `measurement` (modulo 62,500 blocks), so that other measurements use others.

    127.0.0.1 (the server's) is never used; Linux routes all of 127/8 to lo.
    """
    if not 1 <= count <= 250:
        raise ValueError(f"{count} source addresses; 1 to 250 fit one block")
    block = measurement % 62_500
    return [f"127.{1 + block // 250}.{block % 250}.{1 + i}" for i in range(count)]


def generators_needed(connections: int, nofile: int) -> int:
    """Load generators for `connections`: CLIENTS_PER_GENERATOR each, fewer if fds are short."""
    per_gen = min(CLIENTS_PER_GENERATOR, nofile - FD_SPARE)
    if per_gen <= 0:
        raise BenchError(f"RLIMIT_NOFILE is {nofile}: too low for any load generator")
    return max(4, math.ceil(connections / per_gen))


def check_nofile(connections: int, nofile: int) -> None:
    """Raise unless one server process may hold `connections` sockets."""
    if nofile < connections + FD_SPARE:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {nofile}, the server needs {connections + FD_SPARE:,}"
            f" descriptors for {connections:,} connections. Raise it for this shell first "
            f"(as root with CAP_SYS_RESOURCE: `ulimit -Hn {2 * connections + 4 * FD_SPARE}; "
            f"ulimit -Sn {2 * connections + 4 * FD_SPARE}`, or run under `prlimit --nofile="
            f"{2 * connections + 4 * FD_SPARE}`; in a container: `--ulimit nofile=...`), "
            f"or run fewer --connections.")


def wait_calm(fleet: Fleet, server: Server, *, rounds: bool, limit_pct: float,
              max_wait: float, gap: float = 0.5) -> float:
    """Wait until the server's heartbeat is between two bursts of work, at most `max_wait`;
    return the seconds waited.

    `rounds`: the server pings everybody in one round per interval (raw, the seed): wait
    for a round to end (`gap` seconds without a ping at the clients) and for the server to
    have read the pongs (its CPU over `gap` seconds at most `limit_pct` % of a core). A
    heartbeat spread over the interval (the stabilizer's) has no round: only the CPU counts.
    """
    started = time.monotonic()
    last = fleet.stats(light=True)["ping"]
    seen = not rounds
    cpu_then, then = server.cpu_seconds(), started
    while time.monotonic() - started < max_wait:
        time.sleep(gap / 4)
        pings = fleet.stats(light=True)["ping"]
        now = time.monotonic()
        if rounds and pings != last:
            last, seen = pings, True
            cpu_then, then = server.cpu_seconds(), now
            continue
        if not seen or now - then < gap:
            continue
        cpu = server.cpu_seconds()
        if (cpu - cpu_then) / (now - then) * 100 <= limit_pct:
            break
        cpu_then, then = cpu, now
    return time.monotonic() - started


def connect_all(run: Run, server: Server, fleet: Fleet, settings: Settings,
                sources: Sequence[str]) -> None:
    """Open N clients; record wall time, server CPU and memory (server, generators, host)."""
    n = settings.connections
    server.request("POST", "/bench/gc")
    time.sleep(0.5)
    rss_empty = server.rss()
    gens_rss = sum(psutil.Process(pid).memory_info().rss for pid in fleet.pids)
    host_used = psutil.virtual_memory().used
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    opened = fleet.connect(server.port, n, mode=mode_of(run.kind),
                           concurrency=settings.concurrency, timeout=max(300.0, n / 50),
                           sources=sources)
    registered = server.wait_count(n, timeout=300.0)
    if registered != n:
        raise BenchError(f"server registered {registered} of {n} clients")
    connect_s = time.monotonic() - started
    connect_cpu = server.cpu_seconds() - cpu_before
    server.request("POST", "/bench/gc")
    time.sleep(1.0)
    rss_full = server.rss()
    gens_rss = sum(psutil.Process(pid).memory_info().rss for pid in fleet.pids) - gens_rss
    run.notes["by_source"] = opened.get("by_source", {})
    run.values.update({
        "connect_s": connect_s,
        "connects_per_s": n / connect_s,
        "connect_cpu_s": connect_cpu,
        "connect_us": connect_cpu / n * 1e6,
        "rss_empty_mb": rss_empty / 1e6,
        "rss_full_mb": rss_full / 1e6,
        "kb_per_conn": (rss_full - rss_empty) / n / 1024,
        "generator_kb_per_client": gens_rss / n / 1024,
        "host_kb_per_conn": (psutil.virtual_memory().used - host_used) / n / 1024,
    })


def heartbeat_window(run: Run, server: Server, fleet: Fleet, settings: Settings) -> None:
    """Server CPU and the pings every client answered over the heartbeat window."""
    plan, n = settings.core, settings.connections
    fleet.mark()
    before = fleet.stats()
    foreign = ForeignLoad([server.pid, *fleet.pids])
    user0, sys0 = server.cpu_split()
    started = time.monotonic()
    time.sleep(plan.heartbeat_window)
    after = fleet.stats()
    user1, sys1 = server.cpu_split()
    wall = time.monotonic() - started
    intervals = wall / plan.heartbeat_interval
    pings = after["ping"] - before["ping"]
    cpu = (user1 - user0) + (sys1 - sys0)
    run.values.update({
        "hb_cpu_pct": cpu / wall * 100,
        "hb_cpu_s": cpu,
        "hb_wall_s": wall,
        "hb_pings": pings,
        "hb_pings_per_conn_interval": pings / n / intervals,
        "hb_min_conn_pings_per_interval": after["ping_min"] / intervals,
        "hb_max_conn_pings_per_interval": after["ping_max"] / intervals,
        "hb_us_per_ping": cpu / max(pings, 1) * 1e6,
        "hb_closed": after["closed"] - before["closed"] + after["lost"] - before["lost"],
        "hb_open_end": after["open"],
        "hb_foreign_pct": foreign.percent(),
    })


def broadcast_once(run: Run, server: Server, fleet: Fleet, settings: Settings,
                   prefix: str) -> None:
    """One broadcast of one message to all N: wall time to the last client, server CPU
    (less the heartbeat's, at the CPU per ping measured before), and what was lost."""
    n, plan = settings.connections, settings.core
    limit = 1.5 * run.values.get("hb_cpu_pct", 0.0) + 5.0
    run.values[f"{prefix}_calm_wait_s"] = wait_calm(
        fleet, server, rounds=app_kind(run.kind) in ROUND_PINGERS, limit_pct=limit,
        max_wait=settings.quiet_wait)
    base = fleet.stats(light=True)
    foreign = ForeignLoad([server.pid, *fleet.pids])
    user0, sys0 = server.cpu_split()
    started = time.monotonic()
    reply = server.request("POST", f"/bench/broadcast?k=1&size={plan.message_size}")
    after = wait_for(fleet, "bcast", base["bcast"] + n, plan.delivery_timeout, poll=0.05)
    user1, sys1 = server.cpu_split()
    delivered = after["bcast"] - base["bcast"]
    cpu = (user1 - user0) + (sys1 - sys0)
    pings = after["ping"] - base["ping"]
    net = max(cpu - pings * run.values.get("hb_us_per_ping", 0.0) / 1e6, 0.0)
    run.values.update({
        f"{prefix}_delivered": delivered,
        f"{prefix}_lost": n - delivered,
        f"{prefix}_call_s": float(reply["seconds"]),
        f"{prefix}_cpu_s": cpu,
        f"{prefix}_pings": pings,
        f"{prefix}_cpu_net_s": net,
        f"{prefix}_us_per_delivery": net / max(delivered, 1) * 1e6,
        f"{prefix}_foreign_pct": foreign.percent(),
    })
    if delivered:
        run.values[f"{prefix}_wall_s"] = after["bcast_at"] - started


def hundredk_run(kind: str, plan: Plan, settings: Settings, rep: int, measurement: int,
                 log_dir: Path) -> Run:
    """Connect, memory, heartbeat and broadcast for one server (`plan`: the core plan,
    which ``scale.measured`` may have pointed at a redis-server)."""
    settings = replace(settings, core=plan)
    n = settings.connections
    run = Run("100k", kind, n, rep)
    sources = source_addresses(settings.sources, measurement)
    port = free_port()
    with Server(app_kind(kind), port, log_dir, heartbeat_interval=plan.heartbeat_interval,
                heartbeat_timeout=plan.heartbeat_timeout, max_seconds=3600.0,
                extra_args=server_args(kind, plan), name=None) as server, \
            Fleet(plan.generators, log_dir) as fleet:
        server.wait_ready()
        warm_up(server, fleet, plan, mode_of(kind))
        start = fleet.stats(light=True)
        connect_all(run, server, fleet, settings, sources)
        heartbeat_window(run, server, fleet, settings)
        broadcast_once(run, server, fleet, settings, "b1")
        broadcast_once(run, server, fleet, settings, "b2")
        server.request("POST", "/bench/gc")
        end = fleet.stats()
        run.values.update({
            "rss_end_mb": server.rss() / 1e6,
            "closed_total": end["closed"] - start["closed"] + end["lost"] - start["lost"],
            "open_end": end["open"],
            "server_count_end": server.count(),
        })
    return run


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
                             f"{PORT_SHARE:.0%} of the ephemeral port range each)")
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
