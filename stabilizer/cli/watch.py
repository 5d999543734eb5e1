"""``watch``: a refreshing, top-like view of the nodes and the rates seen between polls.

The rates come from successive reads of what ``nodes`` reads (client counts per node, on
the Redis clock) and, with history on, the broadcast stream's offset; `frame` computes them
from two samples with no I/O, `watch` is the loop around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from stabilizer.backends.redis.inspect import RedisInspector, open_backend
from stabilizer.cli.common import EXIT_OK, Row, iso, show, table
from stabilizer.config import WebSocketConfig

CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll: the Redis clock, each live node's (clients, deadline_ms), and how many
    broadcasts history has sequenced (None without history)."""

    at_ms: float
    nodes: dict[str, tuple[int, float]]
    broadcasts: int | None


def frame(previous: Sample | None, current: Sample, node_ttl: float) -> Row:
    """What one refresh shows: the nodes, totals, and rates since `previous` (None on the
    first refresh, or for a node that was not live then)."""
    seconds = None if previous is None else (current.at_ms - previous.at_ms) / 1000
    before = {} if previous is None else previous.nodes

    def rate(now: int | None, then: int | None) -> float | None:
        if seconds is None or seconds <= 0 or now is None or then is None:
            return None
        return round((now - then) / seconds, 3)

    nodes = [{"node_id": node_id, "clients": clients,
              "connections_per_s": rate(clients, before[node_id][0] if node_id in before
                                        else None),
              # a node refreshes its deadline to now + node_ttl at every keepalive
              "last_seen_s": round(max(0.0, node_ttl - (deadline - current.at_ms) / 1000), 1)}
             for node_id, (clients, deadline) in sorted(current.nodes.items())]
    total = sum(clients for clients, _ in current.nodes.values())
    total_before = None if previous is None else sum(c for c, _ in previous.nodes.values())
    return {
        "at": iso(current.at_ms), "seconds": seconds, "nodes": nodes, "connections": total,
        "connections_per_s": rate(total, total_before),
        "broadcasts_per_s": rate(current.broadcasts,
                                 None if previous is None else previous.broadcasts or 0),
        "joined": sorted(set(current.nodes) - set(before)) if previous else [],
        "left": sorted(set(before) - set(current.nodes)),
    }


def render(shown: Row, namespace: str, interval: float) -> str:
    """A frame as text for a terminal."""
    def signed(value: float | None) -> str:
        return "-" if value is None else f"{value:+.1f}"

    head = (f"stabilizer watch  namespace {show(namespace)}  {shown['at']}  "
            f"every {interval:g}s (Ctrl-C quits)\n"
            f"nodes {len(shown['nodes'])}  connections {shown['connections']}  "
            f"connections/s {signed(shown['connections_per_s'])}  "
            f"broadcasts/s {signed(shown['broadcasts_per_s'])}\n")
    changes = "".join(f"{word} {', '.join(show(n) for n in shown[key])}\n"
                      for key, word in (("joined", "joined:"), ("left", "left:"))
                      if shown[key])
    rows = [{"node_id": n["node_id"], "clients": n["clients"],
             "conn/s": signed(n["connections_per_s"]),
             "last_seen": f"{n['last_seen_s']:.1f}s ago"} for n in shown["nodes"]]
    return head + changes + "\n" + table(rows, ["node_id", "clients", "conn/s", "last_seen"])


async def sample(reader: RedisInspector) -> Sample:
    """Poll the nodes (and the broadcast offset) once."""
    rows = await reader.live_nodes()
    at_ms = rows[0].now_ms if rows else await reader.now_ms()
    return Sample(at_ms, {row.node_id: (row.clients, row.deadline_ms) for row in rows},
                  await reader.broadcast_offset())


async def watch(config: WebSocketConfig, args: argparse.Namespace, out: TextIO, *,
                pause: Callable[[float], Awaitable[None]] = asyncio.sleep) -> int:
    """Poll every --interval seconds and redraw, --count times (0: until Ctrl-C)."""
    backend = open_backend(config)
    reader = RedisInspector(backend, config.op_timeout)
    clear = CLEAR if out.isatty() else ""
    previous: Sample | None = None
    refreshes = 0
    try:
        while True:
            current = await sample(reader)
            shown = frame(previous, current, config.node_ttl)
            out.write(json.dumps(shown) + "\n" if args.json
                      else clear + render(shown, config.namespace, args.interval)
                      + ("" if clear else "\n"))
            out.flush()
            refreshes += 1
            if refreshes == args.count:
                return EXIT_OK
            previous = current
            await pause(args.interval)
    finally:
        await backend.aclose()
