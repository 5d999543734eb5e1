"""The ``user`` scenario: ``send_to_user`` against ``send_to_client`` across three replicas.

Three replicas A, B, C (``python -m bench.replicas``, uvicorn in-process) share one
redis-server started for the measurement (no persistence, loopback only), and one load
generator each (``python -m bench.probe``). U users hold three connections each, one per
replica.

* ``stabilizer``: protocol v2 clients with an HS256 JWT (subject ``u<j>``) and the device
  ``d<replica>``, so the client ids are ``u<j>/dA``, ``u<j>/dB``, ``u<j>/dC``; A calls
  ``manager.send_to_user("u<j>", text)`` (three deliveries: one local, two through Redis)
  or ``manager.send_to_client("u<j>/dB", text)`` (one, through Redis).
* ``raw`` (the floor): plain redis-py pub/sub, the sender told where the connections are:
  a direct message is one PUBLISH to B's channel; a user message is a loop over the user's
  local sockets plus one PUBLISH to B and one to C, in one pipeline.

After a warm-up (every user and every connection on B once), A sends M messages of each
kind at a fixed rate (one sender task; message i due at start + i/rate), round-robin over
the users; the order of the two kinds alternates between repetitions. Latency = arrival at
the client minus the ``time.monotonic_ns()`` stamp A wrote into the message just before the
library call (as ``bench.cluster``); it includes the generator's own wake-up and parsing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.cluster import Cpu, lat_values, latencies, reset_latencies, wait_presence
from bench.core import Run, fmt, log, ratio, table
from bench.harness import BenchError, Fleet, ForeignLoad, Server, free_port
from bench.identity.common import Plan, delivered, med, open_clients, spread, wait_delivered, worst
from bench.identity.connect import HS_SECRET, Keys
from bench.support import RedisProc, post_json, wait_idle

KINDS: Final = ("raw", "stabilizer")
REPLICAS: Final = ("A", "B", "C")


def replica(kind: str, name: str, redis: RedisProc, plan: Plan, log_dir: Path) -> Server:
    args = ["--name", name, "--redis-url", redis.url]
    if kind == "raw":
        args.append("--users")
    else:
        args += ["--jwt-secret", HS_SECRET]
        if plan.stabilizer_path:
            args += ["--stabilizer-path", plan.stabilizer_path]
    return Server(kind, free_port(), log_dir, module="bench.replicas", name=name,
                  extra_args=args)


def user_entries(kind: str, name: str, users: int, keys: Keys) -> tuple[str, list[Any]]:
    """(mode, paths) of every user's connection on replica `name`."""
    if kind == "raw":
        return "ws", [f"/ws/u{j}-{name}?user=u{j}" for j in range(users)]
    frames = [json.dumps({"type": "connect", "token": keys.tokens["hs256"][j],
                          "device": f"d{name}"}, separators=(",", ":")) for j in range(users)]
    return "v2", [["/v2", frame] for frame in frames]


def user_targets(kind: str, users: int) -> dict[str, list[list[str]]]:
    """The send specs' targets, per kind of message: each user, or its connection on B."""
    if kind == "raw":
        return {"user": [[f"u{j}", "B,C"] for j in range(users)],
                "direct": [[f"u{j}-B", "B"] for j in range(users)]}
    return {"user": [[f"u{j}", ""] for j in range(users)],
            "direct": [[f"u{j}/dB", ""] for j in range(users)]}


def user_run(kind: str, plan: Plan, keys: Keys, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run("user", kind, plan.users, rep)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProc(log_dir))
        servers = [stack.enter_context(replica(kind, name, redis, plan, log_dir))
                   for name in REPLICAS]
        fleet = stack.enter_context(Fleet(len(REPLICAS), log_dir, module="bench.probe"))
        for server in servers:
            server.wait_ready()
        for index, (name, server) in enumerate(zip(REPLICAS, servers, strict=True)):
            mode, paths = user_entries(kind, name, plan.users, keys)
            open_clients(fleet, [index], server.port, mode, paths, 16)
        for server in servers:
            if server.wait_count(plan.users) != plan.users:
                raise BenchError(f"replica on {server.port} did not register every client")
        run.values["presence_lag_s"] = wait_presence(servers[0], len(REPLICAS) * plan.users)
        targets = user_targets(kind, plan.users)
        sender = servers[0]
        base = delivered(fleet)  # warm-up: every user and every connection on B once
        for phase in ("user", "direct"):
            post_json(sender.port, "/bench/send", {"mode": phase, "n": plan.users,
                                                   "rate": 2000, "targets": targets[phase],
                                                   "size": plan.message_size})
        if wait_delivered(fleet, base + 4 * plan.users, plan) < base + 4 * plan.users:
            raise BenchError("warm-up messages were lost")
        reset_latencies(fleet)
        pids = [redis.pid, *(s.pid for s in servers), *fleet.pids]
        phases = ("user", "direct") if rep % 2 == 0 else ("direct", "user")
        for phase in phases:
            run.values.update(user_phase(phase, targets[phase], plan, fleet, servers, redis,
                                         pids))
    run.values["foreign_pct"] = max(run.values[f"foreign_pct_{p}"] for p in phases)
    return run


def user_phase(phase: str, targets: list[list[str]], plan: Plan, fleet: Fleet,
               servers: list[Server], redis: RedisProc, pids: list[int]) -> dict[str, float]:
    """M messages of one kind at the fixed rate; latency, loss and CPU per message."""
    n = plan.user_messages
    per_message = len(REPLICAS) if phase == "user" else 1
    base = delivered(fleet)
    foreign = ForeignLoad(pids)
    cpu = Cpu(redis=redis.cpu_seconds,
              **{name: s.cpu_seconds for name, s in zip(REPLICAS, servers, strict=True)})
    reply = post_json(servers[0].port, "/bench/send", {
        "mode": phase, "n": n, "rate": plan.user_rate, "targets": targets,
        "size": plan.message_size})
    got = wait_delivered(fleet, base + n * per_message, plan) - base
    spent = cpu.spent()
    every: list[int] = []
    values: dict[str, float] = {}
    for index, name in enumerate(REPLICAS):
        lat, _ = latencies(fleet, [index])
        every += lat
        if phase == "user":
            values.update(lat_values(f"user_{name}", lat))
    remote = spent["B"] + (spent["C"] if phase == "user" else 0.0)
    values.update(lat_values(phase, every))
    values.update({
        f"{phase}_lost": n * per_message - got,
        f"{phase}_failed": reply["failed"],
        f"{phase}_a_us": spent["A"] / n * 1e6,
        f"{phase}_remote_us": remote / (n * max(per_message - 1, 1)) * 1e6,
        f"{phase}_redis_us": spent["redis"] / n * 1e6,
        f"foreign_pct_{phase}": foreign.percent(),
    })
    return values


def user_report(runs: list[Run], plan: Plan, kinds: Sequence[str]) -> list[str]:
    calls = {"raw": {"direct": "PUBLISH to B", "user": "local send + PUBLISH to B and C"},
             "stabilizer": {"direct": "send_to_client", "user": "send_to_user"}}

    def m(kind: str, key: str) -> float | None:
        return med(runs, "user", kind, key)

    rows = []
    for phase in ("direct", "user"):
        for kind in kinds:
            rows.append([
                kind, calls[kind][phase], "3" if phase == "user" else "1",
                fmt(m(kind, f"{phase}_p50_ms")), fmt(m(kind, f"{phase}_p99_ms")),
                spread(runs, "user", kind, f"{phase}_p99_ms", 2),
                ratio(m(kind, f"{phase}_p99_ms"), m("raw", f"{phase}_p99_ms")),
                fmt(m(kind, f"{phase}_max_ms")),
                fmt(worst(runs, "user", kind, f"{phase}_lost"), 0),
                fmt(m(kind, f"{phase}_a_us"), 0),
                ratio(m(kind, f"{phase}_a_us"), m("raw", f"{phase}_a_us")),
                fmt(m(kind, f"{phase}_remote_us"), 0), fmt(m(kind, f"{phase}_redis_us"), 0)])
    parts = [
        f"### Users: {plan.users:,} users × 3 connections (one on each of A, B, C), "
        f"{plan.user_messages:,} messages of each kind at {plan.user_rate:,.0f}/s from A\n\n"
        + table(["contender", "call on A", "deliveries / call", "p50 ms", "p99 ms",
                 "p99 range", "p99 vs raw", "max ms", "lost (worst rep)", "A CPU µs / call",
                 "vs raw", "B, C CPU µs / remote delivery", "Redis CPU µs / call"], rows)]
    rows = []
    for kind in kinds:
        row = [kind]
        for name in REPLICAS:
            row += [fmt(m(kind, f"user_{name}_p50_ms")), fmt(m(kind, f"user_{name}_p99_ms"))]
        row.append(ratio(m(kind, "user_p99_ms"), m(kind, "direct_p99_ms")))
        row.append(ratio(m(kind, "user_a_us"), m(kind, "direct_a_us")))
        rows.append(row)
    parts.append("### A user message, by the replica of the receiving connection, and against "
                 "the direct message of the same contender\n\n" + table(
                     ["contender", "p50 on A (local) ms", "p99 on A", "p50 on B", "p99 on B",
                      "p50 on C", "p99 on C", "user p99 / direct p99",
                      "user A CPU / direct A CPU"], rows))
    lags = [f"{r.kind} {r.values['presence_lag_s']:.1f}s" for r in runs
            if r.scenario == "user" and r.values.get("presence_lag_s", 0) > 0.2]
    if lags:
        parts.append("Connections missing from Redis presence after connecting: waited "
                     + ", ".join(lags) + ".")
    return parts
