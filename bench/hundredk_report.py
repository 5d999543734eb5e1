"""The tables of ``bench.hundredk``: medians, with the spread over repetitions, and ratios to
raw (and to the seed and python-socketio when they ran)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Final

from bench.core import Plan, Run, fmt, ratio, report_tail, table

#: Phoenix's published 2 million connections on 40 cores.
PHOENIX_PER_CORE: Final = 50_000
BASELINES: Final = ("raw", "seed", "socketio")


def values_of(runs: Sequence[Run], kind: str, key: str) -> list[float]:
    return [r.values[key] for r in runs
            if r.kind == kind and r.error is None and key in r.values]


def median(runs: Sequence[Run], kind: str, key: str) -> float | None:
    values = values_of(runs, kind, key)
    return statistics.median(values) if values else None


def cell(runs: Sequence[Run], kind: str, key: str, digits: int = 1) -> str:
    """The median, and (min-max) when there was more than one repetition."""
    values = values_of(runs, kind, key)
    if not values:
        return "n/a"
    shown = fmt(statistics.median(values), digits)
    if len(values) > 1:
        shown += f" ({fmt(min(values), digits)}–{fmt(max(values), digits)})"
    return shown


def worst(runs: Sequence[Run], kind: str, key: str) -> str:
    values = values_of(runs, kind, key)
    return fmt(max(values), 0) if values else "n/a"


def compared(runs: Sequence[Run], kinds: Sequence[str], key: str, digits: int = 1
             ) -> tuple[list[str], list[list[str]]]:
    """Columns value, vs raw, vs seed, vs socketio (those that ran), one row per server."""
    bases = [b for b in BASELINES if b in kinds]
    header = [*(f"vs {b}" for b in bases)]
    rows = [[cell(runs, kind, key, digits),
             *(ratio(median(runs, kind, key), median(runs, b, key)) for b in bases)]
            for kind in kinds]
    return header, rows


def memory_table(runs: Sequence[Run], n: int, kinds: Sequence[str]) -> str:
    vs, kb = compared(runs, kinds, "kb_per_conn")
    vs_c, connect = compared(runs, kinds, "connect_us", 0)
    rows = [[kind, cell(runs, kind, "rss_empty_mb"), cell(runs, kind, "rss_full_mb", 0), *k,
             cell(runs, kind, "connect_s"), *c, cell(runs, kind, "host_kb_per_conn")]
            for kind, k, c in zip(kinds, kb, connect, strict=True)]
    return (f"### Memory and connect: {n:,} connections\n\n" + table(
        ["server", "RSS, 0 conns (MB)", f"RSS, {n:,} conns (MB)", "KB / conn", *vs,
         f"connect all {n:,} (s)", "server CPU µs / connect", *vs_c,
         "host memory KB / conn (server + clients + kernel)"], rows))


def heartbeat_table(runs: Sequence[Run], n: int, plan: Plan, kinds: Sequence[str]) -> str:
    vs, pct = compared(runs, kinds, "hb_cpu_pct")
    vs_u, per_ping = compared(runs, kinds, "hb_us_per_ping")
    rows = [[kind, *p, cell(runs, kind, "hb_pings_per_conn_interval", 2),
             cell(runs, kind, "hb_min_conn_pings_per_interval", 2), *u,
             worst(runs, kind, "hb_closed")]
            for kind, p, u in zip(kinds, pct, per_ping, strict=True)]
    return (f"### Heartbeat: {n:,} idle clients, interval {plan.heartbeat_interval:g}s, timeout "
            f"{plan.heartbeat_timeout:g}s, {plan.heartbeat_window:g}s window\n\n" + table(
                ["server", "CPU % of a core", *vs, "pings / conn / interval",
                 "slowest conn pings / interval", "µs CPU / ping", *vs_u, "conns closed"],
                rows))


def broadcast_table(runs: Sequence[Run], n: int, kinds: Sequence[str]) -> str:
    vs, wall = compared(runs, kinds, "b2_wall_s", 3)
    vs_c, cpu = compared(runs, kinds, "b2_cpu_net_s", 3)
    rows = []
    for kind, w, c in zip(kinds, wall, cpu, strict=True):
        lost = [v for key in ("b1_lost", "b2_lost") for v in values_of(runs, kind, key)]
        rows.append([kind, cell(runs, kind, "b1_wall_s", 3), *w,
                     cell(runs, kind, "b2_cpu_s", 3), *c,
                     cell(runs, kind, "b2_us_per_delivery", 2),
                     cell(runs, kind, "b2_pings", 0),
                     fmt(max(lost), 0) if lost else "n/a"])
    return (f"### One 64-byte broadcast to all {n:,}\n\n" + table(
        ["server", "first: s to the last client", "second: s to the last client", *vs,
         "second: server CPU s", "net of the pings in it", *vs_c, "µs CPU (net) / delivery",
         "pings in the window", "lost (either)"], rows))


def per_core_table(runs: Sequence[Run], n: int, plan: Plan, kinds: Sequence[str]) -> str:
    rows = []
    for kind in kinds:
        pct = median(runs, kind, "hb_cpu_pct")
        per_ping = median(runs, kind, "hb_us_per_ping")
        # One ping per connection per interval at the CPU per ping measured: robust to how
        # many of raw's or the seed's rounds (one every interval + a round) a window held.
        ceiling = plan.heartbeat_interval * 1e6 / per_ping if per_ping else None
        held = n if values_of(runs, kind, "server_count_end") else None
        rows.append([kind, fmt(held, 0), ratio(held, PHOENIX_PER_CORE), fmt(pct, 1),
                     fmt(ceiling, 0), ratio(ceiling, PHOENIX_PER_CORE),
                     cell(runs, kind, "b2_wall_s", 2)])
    return ("### Per core (one replica is one event loop: one core)\n\n" + table(
        ["server", "connections held on one core", f"vs Phoenix {PHOENIX_PER_CORE:,}/core",
         "heartbeat: % of that core",
         "connections whose pings (1 per interval) alone fill it",
         "vs Phoenix", "one broadcast to all (s)"], rows))


def report(runs: list[Run], n: int, plan: Plan, kinds: Sequence[str]) -> str:
    parts = [memory_table(runs, n, kinds), heartbeat_table(runs, n, plan, kinds),
             broadcast_table(runs, n, kinds), per_core_table(runs, n, plan, kinds)]
    checks = []
    for run in runs:
        if run.error is None:
            dropped = run.values.get("closed_total", 0) + run.values.get("b1_lost", 0) \
                + run.values.get("b2_lost", 0)
            held = run.values.get("server_count_end") == n and run.values.get("open_end") == n
            checks.append(f"- {run.kind} rep {run.rep + 1}: "
                          + ("nothing dropped, all connections open at the end" if
                             not dropped and held else
                             f"DROPPED: closed {run.values.get('closed_total')}, lost "
                             f"{run.values.get('b1_lost')} + {run.values.get('b2_lost')}, "
                             f"open at the end {run.values.get('open_end')}, server counts "
                             f"{run.values.get('server_count_end')}"))
    if checks:
        parts.append("### Nothing dropped?\n\n" + "\n".join(checks))
    parts += report_tail(runs, foreign=[
        v for r in runs for k, v in r.values.items() if k.endswith("foreign_pct")])
    return "\n\n".join(parts)
