"""The steps of one ``bench.hundredk`` measurement: connect, memory, heartbeat, broadcast."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import psutil

from bench.core import Plan, Run, app_kind, mode_of, server_args, wait_for, warm_up
from bench.harness import BenchError, Fleet, ForeignLoad, Server, free_port
from bench.hundredk_limits import source_addresses

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
