"""Cross-replica benchmarks: stabilizer vs python-socketio's AsyncRedisManager vs raw pub/sub.

Usage::

    python -m bench.cluster --quick   # small counts, one repetition: a smoke check
    python -m bench.cluster           # full run: 3 repetitions, medians
    python -m bench.cluster --servers raw,stabilizer --baseline 13bff3a   # before/after

``--baseline REV`` adds a contender ``stabilizer@<short REV>``: the same replica app as
``stabilizer`` (bench/replicas.py), importing the ``stabilizer/`` folder of git revision REV
(exported with ``git archive`` to bench/results/baseline-<short REV>-<stamp>/; the
``stabilizer`` contender is the work tree, copied to bench/results/snapshot-<stamp>/). It
takes part in cross, groups and resume, in the same rotation of order between repetitions,
appears in every table next to the stabilizer, and the report ends with a before/after
table (stabilizer / baseline). The JSON results record the revision
(``environment.baseline``).

Scenarios (each repetition of each contender starts its own redis-server, replicas and load
generators; see BENCHMARKS.md for the method):

* ``cross``: replicas A and B on one Redis, N clients on B, A sends.
  1. direct messages at a fixed rate: end-to-end latency (stamped in the payload);
  2. direct messages as fast as A can send, with 1 and with C concurrent sender tasks on A:
     delivered rate and loss;
  3. broadcasts to the N clients on B, issued on A (cross-replica) and on B (local): server
     CPU on B per delivery.
* ``groups``: one group of M members spread over 3 replicas, ``send_to_group`` (Socket.IO:
  a room; raw: a group channel) issued on replica R0 at a fixed rate: CPU per delivery on
  every replica and end-to-end latency.
* ``resume`` (stabilizer and its baseline only): clients with history miss K broadcasts and
  resume on another replica with token + positions: time to the ``resume`` frame, server
  and Redis CPU, and the Redis round trips (``redis-cli MONITOR``; EVALSHA named after the
  Lua scripts of the code each contender imports).

Tables give ratios to raw (the floor) on their main figure: p99 latency, delivered rate,
B CPU per broadcast delivery, replica CPU per group delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from bench._common import HOST, raise_nofile_limit
from bench.core import (
    RESULTS,
    Run,
    app_kind,
    code_path,
    compare_table,
    describe_code,
    environment,
    export_baseline,
    fmt,
    guarded,
    log,
    log_name,
    median_of,
    ratio,
    report_tail,
    rotated,
    scenario_label,
    snapshot_stabilizer,
    table,
    with_baseline,
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
from bench.support import RedisProc, post_json, quantile, wait_idle

CONTENDERS: Final = ("raw", "socketio", "stabilizer")
SCENARIOS: Final = ("cross", "groups", "resume")
GROUP: Final = "g"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    reps: int
    cross_clients: int = 500
    latency_messages: int = 5000
    latency_rate: float = 1000.0
    throughput_messages: int = 10000
    throughput_senders: tuple[int, ...] = (1, 16, 64)
    broadcasts: int = 100
    group_clients: int = 1000
    group_replicas: int = 3
    group_messages: int = 100
    group_rate: float = 10.0
    resume_clients: int = 20
    resume_missed: int = 1000
    resume_history: int = 2000
    monitor_clients: int = 3
    message_size: int = 64
    delivery_timeout: float = 120.0
    stall_timeout: float = 10.0
    stabilizer_path: str | None = None
    baseline_label: str | None = None  # stabilizer@<short rev>, with --baseline
    baseline_path: str | None = None  # folder holding the export of that revision


def code_of(kind: str, plan: Plan) -> str | None:
    """The folder `kind` imports stabilizer from (None: not a stabilizer contender)."""
    return code_path(kind, plan.stabilizer_path, plan.baseline_label, plan.baseline_path)


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, cross_clients=100, latency_messages=1000, throughput_messages=2000,
                    throughput_senders=(1, 16),
                    broadcasts=20, group_clients=300, group_messages=20, resume_clients=3,
                    resume_missed=1000, monitor_clients=1, delivery_timeout=60.0)


# --------------------------------------------------------------------------- plumbing


def replica(kind: str, name: str, redis: RedisProc, plan: Plan, log_dir: Path,
            *extra: str) -> Server:
    args = ["--name", name, "--redis-url", redis.url, *extra]
    path = code_of(kind, plan)
    if path:
        args += ["--stabilizer-path", path]
    suffix = log_name(kind)
    return Server(app_kind(kind), free_port(), log_dir, module="bench.replicas",
                  name=f"{name}-{suffix}" if suffix else name, extra_args=args)


def client_paths(kind: str, ids: Sequence[str], group: str | None = None) -> list[str]:
    """URL paths of the clients `ids` (Socket.IO: its endpoint with the id as a query)."""
    suffix = f"group={group}" if group else ""
    if kind == "socketio":
        tail = f"&{suffix}" if suffix else ""
        return [f"/socket.io/?EIO=4&transport=websocket&cid={cid}{tail}" for cid in ids]
    tail = f"?{suffix}" if suffix else ""
    return [f"/ws/{cid}{tail}" for cid in ids]


def connect(fleet: Fleet, gens: Sequence[int], port: int, kind: str,
            paths: Sequence[str]) -> None:
    """Open `paths` on `port` from the generators `gens` (spread evenly); all must connect."""
    mode = "sio" if kind == "socketio" else "ws"
    shares = [list(paths[i::len(gens)]) for i in range(len(gens))]
    for index, share in zip(gens, shares, strict=True):
        fleet.gens[index].send({"cmd": "connect", "port": port, "paths": share, "mode": mode,
                                "concurrency": 32, "timeout": 30.0})
    replies = [fleet.gens[index].reply(120.0) for index in gens]
    connected = sum(r["connected"] for r in replies)
    if connected != len(paths):
        errors = [e for r in replies for e in r["errors"]][:5]
        raise BenchError(f"only {connected} of {len(paths)} clients connected: {errors}")


def wait_joined(server: Server, count: int, joined: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        reply = server.request("GET", "/bench/count", timeout=30.0)
        if reply["count"] == count and reply["joined"] >= joined:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"replica on {server.port}: {reply}, expected count {count}, "
                             f"joined {joined}")
        time.sleep(0.05)


def wait_presence(server: Server, expected: int, timeout: float = 30.0) -> float:
    """Stabilizer: seconds until Redis presence lists `expected` clients (0 at once).

    A burst of connects can leave clients out of presence for a while (their registration
    failed; the node re-registers them at its next maintenance step): until then no other
    replica can reach them, so measurements wait for it, and the delay is recorded.
    """
    started = time.monotonic()
    while True:
        reply = server.request("GET", "/bench/count", timeout=30.0)
        if reply.get("cluster", expected) >= expected:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(f"presence holds {reply.get('cluster')} of {expected} clients "
                             f"after {timeout:g}s")
        time.sleep(0.05)


def delivered(fleet: Fleet, gens: Sequence[int] | None = None) -> int:
    indexes = range(len(fleet.gens)) if gens is None else gens
    for index in indexes:
        fleet.gens[index].send({"cmd": "stats", "light": True})
    return sum(int(fleet.gens[index].reply(30.0)["bcast"]) for index in indexes)


def wait_delivered(fleet: Fleet, expected: int, plan: Plan) -> int:
    """Poll until `expected` frames were counted, nothing arrived for stall_timeout seconds,
    or delivery_timeout passed; return the count."""
    deadline = time.monotonic() + plan.delivery_timeout
    last, last_change = -1, time.monotonic()
    while True:
        now_count = delivered(fleet)
        now = time.monotonic()
        if now_count >= expected:
            return now_count
        if now_count != last:
            last, last_change = now_count, now
        elif now - last_change > plan.stall_timeout or now > deadline:
            return now_count
        time.sleep(0.02)


def latencies(fleet: Fleet, gens: Sequence[int] | None = None) -> tuple[list[int], int]:
    """(latencies in µs, last arrival ns) recorded by `gens` since the last reset; resets."""
    indexes = list(range(len(fleet.gens)) if gens is None else gens)
    for index in indexes:
        fleet.gens[index].send({"cmd": "lat", "reset": True})
    values: list[int] = []
    last = 0
    for index in indexes:
        reply = fleet.gens[index].reply(60.0)
        values += reply["lat_us"]
        last = max(last, int(reply["last_ns"]))
    return values, last


def reset_latencies(fleet: Fleet) -> None:
    for gen in fleet.gens:
        gen.send({"cmd": "reset"})
    for gen in fleet.gens:
        gen.reply(30.0)


def lat_values(prefix: str, values: list[int]) -> dict[str, float]:
    """p50/p99/max in ms of latencies in µs."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        value = quantile(ordered, q)
        if value is not None:
            out[f"{prefix}_{name}_ms"] = value / 1000
    return out


class Cpu:
    """CPU seconds of several processes between two readings."""

    def __init__(self, **reads: Callable[[], float]) -> None:
        self._reads = reads
        self._start = {name: read() for name, read in reads.items()}

    def spent(self) -> dict[str, float]:
        return {name: read() - self._start[name] for name, read in self._reads.items()}


# --------------------------------------------------------------------------- A: cross


def cross_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log)
    run = Run("cross", kind, plan.cross_clients, rep)
    size = plan.message_size
    with RedisProc(log_dir) as redis, \
            replica(kind, "A", redis, plan, log_dir) as a, \
            replica(kind, "B", redis, plan, log_dir) as b, \
            Fleet(2, log_dir, module="bench.probe") as fleet:
        a.wait_ready()
        b.wait_ready()
        ids = [f"b{i}" for i in range(1, plan.cross_clients + 1)]
        connect(fleet, [0, 1], b.port, kind, client_paths(kind, ids))
        if b.wait_count(len(ids)) != len(ids):
            raise BenchError("clients not registered on B")
        run.values["presence_lag_s"] = wait_presence(b, len(ids))
        targets = [[cid, "B"] for cid in ids]
        pids = [redis.pid, a.pid, b.pid, *fleet.pids]

        # warm-up: both paths once
        base = delivered(fleet)
        post_json(a.port, "/bench/send", {"mode": "direct", "n": 300, "rate": 3000,
                                          "targets": targets, "size": size})
        post_json(a.port, "/bench/send", {"mode": "broadcast", "n": 2, "size": size})
        post_json(b.port, "/bench/send", {"mode": "broadcast", "n": 2, "size": size})
        if wait_delivered(fleet, base + 300 + 4 * len(ids), plan) < base + 300 + 4 * len(ids):
            raise BenchError("warm-up messages were lost")
        reset_latencies(fleet)

        # 1. direct messages at a fixed rate
        n = plan.latency_messages
        base = delivered(fleet)
        foreign = ForeignLoad(pids)
        cpu = Cpu(a=a.cpu_seconds, b=b.cpu_seconds, redis=redis.cpu_seconds)
        reply = post_json(a.port, "/bench/send", {"mode": "direct", "n": n,
                                                  "rate": plan.latency_rate,
                                                  "targets": targets, "size": size})
        got = wait_delivered(fleet, base + n, plan) - base
        spent = cpu.spent()
        lat, _ = latencies(fleet)
        wall = (reply["t1_ns"] - reply["t0_ns"]) / 1e9
        run.values.update(lat_values("direct", lat))
        run.values.update({
            "direct_lost": n - got,
            "direct_rate": n / wall,
            "direct_failed": reply["failed"],
            "direct_a_us": spent["a"] / n * 1e6,
            "direct_b_us": spent["b"] / max(got, 1) * 1e6,
            "direct_redis_us": spent["redis"] / n * 1e6,
            "foreign_pct_direct": foreign.percent(),
        })

        # 3. broadcasts to the clients on B: from A (cross-replica), then from B (local)
        for where, origin in (("cross", a), ("local", b)):
            k = plan.broadcasts
            expected = k * len(ids)
            base = delivered(fleet)
            foreign = ForeignLoad(pids)
            cpu = Cpu(a=a.cpu_seconds, b=b.cpu_seconds, redis=redis.cpu_seconds)
            post_json(origin.port, "/bench/send", {"mode": "broadcast", "n": k, "size": size})
            got = wait_delivered(fleet, base + expected, plan) - base
            spent = cpu.spent()
            lat, _ = latencies(fleet)
            run.values.update(lat_values(f"bcast_{where}", lat))
            run.values.update({
                f"bcast_{where}_b_us": spent["b"] / max(got, 1) * 1e6,
                f"bcast_{where}_a_ms": spent["a"] / k * 1e3,
                f"bcast_{where}_lost": expected - got,
                f"foreign_pct_bcast_{where}": foreign.percent(),
            })

        # 2. direct messages as fast as A can send them
        for senders in plan.throughput_senders:
            n = plan.throughput_messages
            base = delivered(fleet)
            reset_latencies(fleet)
            foreign = ForeignLoad(pids)
            cpu = Cpu(a=a.cpu_seconds, b=b.cpu_seconds, redis=redis.cpu_seconds)
            reply = post_json(a.port, "/bench/send", {"mode": "direct", "n": n, "rate": 0,
                                                      "concurrency": senders,
                                                      "targets": targets, "size": size})
            got = wait_delivered(fleet, base + n, plan) - base
            spent = cpu.spent()
            lat, last_ns = latencies(fleet)
            span = (max(last_ns, reply["t1_ns"]) - reply["t0_ns"]) / 1e9
            run.values.update({
                f"tput{senders}_delivered_per_s": got / span,
                f"tput{senders}_sent_per_s": n / ((reply["t1_ns"] - reply["t0_ns"]) / 1e9),
                f"tput{senders}_lost": n - got,
                f"tput{senders}_failed": reply["failed"],
                f"tput{senders}_b_cpu_pct": spent["b"] / span * 100,
                f"tput{senders}_a_cpu_pct": spent["a"] / span * 100,
                f"tput{senders}_redis_cpu_pct": spent["redis"] / span * 100,
                f"foreign_pct_tput{senders}": foreign.percent(),
            })
            run.values.update(lat_values(f"tput{senders}", lat))
    run.values["foreign_pct"] = max(v for k, v in run.values.items()
                                    if k.startswith("foreign_pct_"))
    return run


# --------------------------------------------------------------------------- B1: groups


def group_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log)
    run = Run("groups", kind, plan.group_clients, rep)
    count = plan.group_replicas
    extra = ("--group", GROUP) if kind == "raw" else ()
    with RedisProc(log_dir) as redis:
        servers: list[Server] = []
        try:
            for index in range(count):
                servers.append(replica(kind, f"R{index}", redis, plan, log_dir, *extra))
            with Fleet(count, log_dir, module="bench.probe") as fleet:
                for server in servers:
                    server.wait_ready()
                ids = [f"g{i}" for i in range(1, plan.group_clients + 1)]
                members = [ids[i::count] for i in range(count)]
                for index, server in enumerate(servers):
                    connect(fleet, [index], server.port, kind,
                            client_paths(kind, members[index], GROUP))
                for server, share in zip(servers, members, strict=True):
                    wait_joined(server, len(share), len(share))
                run.values["presence_lag_s"] = wait_presence(servers[0], len(ids))
                run.values["join_errors"] = sum(
                    s.request("GET", "/bench/count")["join_errors"] for s in servers)
                sender = servers[0]
                spec = {"mode": "group", "group": GROUP, "size": plan.message_size}
                base = delivered(fleet)
                post_json(sender.port, "/bench/send", {**spec, "n": 3, "rate": 20})
                if wait_delivered(fleet, base + 3 * len(ids), plan) < base + 3 * len(ids):
                    raise BenchError("warm-up group messages were lost")
                reset_latencies(fleet)

                k = plan.group_messages
                base = delivered(fleet)
                foreign = ForeignLoad([redis.pid, *(s.pid for s in servers), *fleet.pids])
                cpu = Cpu(redis=redis.cpu_seconds,
                          **{f"r{i}": s.cpu_seconds for i, s in enumerate(servers)})
                post_json(sender.port, "/bench/send", {**spec, "n": k, "rate": plan.group_rate})
                got = wait_delivered(fleet, base + k * len(ids), plan) - base
                spent = cpu.spent()
                run.values["lost"] = k * len(ids) - got
                every: list[int] = []
                for index, share in enumerate(members):
                    lat, _ = latencies(fleet, [index])
                    every += lat
                    run.values[f"r{index}_us"] = spent[f"r{index}"] / (k * len(share)) * 1e6
                    run.values.update(lat_values(f"r{index}", lat))
                run.values.update(lat_values("all", every))
                run.values["redis_us"] = spent["redis"] / (k * len(ids)) * 1e6
                run.values["replicas_us"] = sum(spent[f"r{i}"] for i in range(count)) / (
                    k * len(ids)) * 1e6
                run.values["foreign_pct"] = foreign.percent()
        finally:
            for server in servers:
                server.stop()
    return run


# --------------------------------------------------------------------------- B2: resume


CLOSE_FRAME: Final = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


class WsClient:
    """A minimal WebSocket client: enough to time a resume without client-side overhead."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int, path: str) -> WsClient:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
            writer.close()
            raise BenchError(f"handshake refused: {head[:80]!r}")
        return cls(reader, writer)

    async def until(self, marker: bytes) -> list[bytes]:
        """Text frames up to and including the first one that starts with `marker`."""
        frames: list[bytes] = []
        buf = self.buf
        while True:
            pos = 0
            while len(buf) - pos >= 2:
                length = buf[pos + 1] & 0x7F
                header = 2
                if length == 126:
                    if len(buf) - pos < 4:
                        break
                    length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
                elif length == 127:
                    if len(buf) - pos < 10:
                        break
                    length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                if len(buf) - pos < header + length:
                    break
                opcode = buf[pos] & 0x0F
                payload = bytes(buf[pos + header:pos + header + length])
                pos += header + length
                if opcode == 8:
                    del buf[:pos]
                    raise BenchError(f"server closed: {payload[:2].hex()} {payload[2:]!r}")
                if opcode == 1:
                    frames.append(payload)
                    if payload.startswith(marker):
                        del buf[:pos]
                        return frames
            del buf[:pos]
            data = await self.reader.read(1 << 16)
            if not data:
                raise BenchError("connection closed by the server")
            buf += data

    def close(self) -> None:
        self.writer.write(CLOSE_FRAME)
        self.writer.close()


@dataclass
class Resumable:
    """What a client keeps to resume: its id, newest token and position on "all"."""

    cid: str
    token: str = ""
    position: tuple[int, str] | None = None
    ws: WsClient | None = None

    def path(self) -> str:
        positions = {"all": list(self.position)} if self.position else {}
        return (f"/ws/{self.cid}?token={quote(self.token)}"
                f"&positions={quote(json.dumps(positions, separators=(',', ':')))}")

    def absorb(self, frames: list[bytes]) -> int:
        """Read token and position from received frames; return message frames seen."""
        seen = 0
        for raw in frames:
            frame = json.loads(raw)
            if frame.get("type") == "session":
                self.token = frame["token"]
            elif frame.get("type") == "message":
                seen += 1
                if frame.get("stream") == "all" and frame.get("offset") is not None:
                    self.position = (int(frame["offset"]), str(frame["epoch"]))
        return seen


#: Where the Redis backend's Lua scripts live: since the reorganisation (6fcc2a8), before it.
SCRIPT_MODULES: Final = ("stabilizer/backends/redis/scripts.py",
                         "stabilizer/backends/redis_scripts.py")
#: Scripts that left that module for one of their own, read too where the tree has them
#: (KEEPALIVE, a BACKGROUND command, is one).
MOVED_SCRIPT_MODULES: Final = ("stabilizer/backends/redis/liveness_scripts.py",)


def script_names(root: Path) -> dict[str, str]:
    """SHA1 of each Lua script of the Redis backend under `root` (a snapshot or baseline
    export holding stabilizer/) -> its name (for MONITOR lines).

    The modules are loaded from their files (the Lua modules they import come from the
    controller's path), so the controller never imports the contender's package, and
    either layout works.
    """
    path = next((root / name for name in SCRIPT_MODULES if (root / name).is_file()), None)
    if path is None:
        raise BenchError(f"no Lua scripts module under {root} (looked for {SCRIPT_MODULES})")
    names = _names_in(path)
    if not names:
        raise BenchError(f"no Lua scripts found in {path}")
    for moved in MOVED_SCRIPT_MODULES:
        if (root / moved).is_file():
            names.update(_names_in(root / moved))
    return names


def _names_in(path: Path) -> dict[str, str]:
    """SHA1 -> name of each Lua script (an upper-case string) of the module at `path`."""
    spec = importlib.util.spec_from_file_location(f"_bench_lua_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = {}
    for name in dir(module):
        value = getattr(module, name)
        if name.isupper() and isinstance(value, str):
            names[hashlib.sha1(value.encode()).hexdigest()] = name.lower()
    return names


def parse_monitor(path: Path, scripts: dict[str, str]) -> Counter[str]:
    """Top-level commands (round trips) in a MONITOR log; EVALSHA named by script."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if "] \"" not in line or "[0 lua]" in line or " lua]" in line:
            continue
        words = line.split("] ", 1)[1].split(" ")
        command = words[0].strip('"').upper()
        if command == "EVALSHA" and len(words) > 1:
            command = f"EVALSHA {scripts.get(words[1].strip(chr(34)), words[1][:10])}"
        found[command] += 1
    return found


BACKGROUND: Final = ("EVALSHA keepalive", "EVALSHA sweep", "PING")


async def resume_all(clients: list[Resumable], port: int) -> list[tuple[float, int, int]]:
    """Resume every client in turn on `port`; (seconds to the resume frame, message frames,
    replayed as the resume frame says) for each."""
    outcomes = []
    for client in clients:
        started = time.perf_counter()
        ws = await WsClient.open(port, client.path())
        frames = await ws.until(b'{"type":"resume"')
        elapsed = time.perf_counter() - started
        client.ws = ws
        seen = client.absorb(frames[:-1])
        outcomes.append((elapsed, seen, int(json.loads(frames[-1])["replayed"])))
    return outcomes


def close_all(clients: list[Resumable]) -> None:
    for client in clients:
        if client.ws is not None:
            client.ws.close()
            client.ws = None


def resume_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    wait_idle(log)
    run = Run("resume", kind, plan.resume_missed, rep)
    code = code_of(kind, plan)
    scripts = script_names(Path(code) if code else REPO)
    extra = ("--history", str(plan.resume_history),
             "--stabilizer-config", json.dumps({"node_ttl": 60.0, "session_ttl": 300.0}))
    with RedisProc(log_dir) as redis, \
            replica(kind, "A", redis, plan, log_dir, *extra) as a, \
            replica(kind, "B", redis, plan, log_dir, *extra) as b:
        a.wait_ready()
        b.wait_ready()
        monitor_name = f"monitor-{log_name(kind) or kind}-rep{rep}.log"
        run.values.update(asyncio.run(
            _resume_phases(plan, redis, a, b, log_dir / monitor_name, scripts)))
    return run


async def _resume_phases(plan: Plan, redis: RedisProc, a: Server, b: Server,
                         monitor_path: Path, scripts: dict[str, str]) -> dict[str, float]:
    missed = plan.resume_missed
    clients = [Resumable(f"r{i}") for i in range(1, plan.resume_clients + 1)]
    for client in clients:  # a fresh session on A, then one message on "all"
        client.ws = await WsClient.open(a.port, f"/ws/{client.cid}")
        client.absorb(await client.ws.until(b'{"type":"session"'))
    await asyncio.to_thread(post_json, a.port, "/bench/send", {"mode": "broadcast", "n": 1})
    for client in clients:
        assert client.ws is not None
        client.absorb(await client.ws.until(b'{"type":"message"'))
    values: dict[str, float] = {}

    async def away_then_resume(label: str, count: int, watched: list[Resumable]) -> None:
        close_all(clients)
        await asyncio.to_thread(_wait_count, a, b, 0)
        await asyncio.sleep(0.5)  # the sessions are suspended after the sockets closed
        if count:
            await asyncio.to_thread(post_json, a.port, "/bench/send",
                                    {"mode": "broadcast", "n": count, "size": plan.message_size})
        stats_before = redis.commandstats()
        foreign = ForeignLoad([redis.pid, a.pid, b.pid])
        cpu = Cpu(b=b.cpu_seconds, redis=redis.cpu_seconds, a=a.cpu_seconds)
        outcomes = await resume_all(watched, b.port)
        await asyncio.sleep(0.3)  # anything the server does right after the resume frame
        spent = cpu.spent()
        stats_after = redis.commandstats()
        n = len(watched)
        times = [elapsed * 1e3 for elapsed, _, _ in outcomes]
        wrong = sum(1 for _, seen, replayed in outcomes if seen != count or replayed != count)
        values.update({
            f"{label}_ms_p50": statistics.median(times),
            f"{label}_ms_max": max(times),
            f"{label}_b_cpu_ms": spent["b"] / n * 1e3,
            f"{label}_redis_cpu_ms": spent["redis"] / n * 1e3,
            f"{label}_a_cpu_ms": spent["a"] / n * 1e3,
            f"{label}_wrong": wrong,
            f"{label}_evalsha": (stats_after.get("evalsha", 0)
                                 - stats_before.get("evalsha", 0)) / n,
            f"foreign_pct_{label}": foreign.percent(),
        })

    await away_then_resume("missed", missed, clients)
    await away_then_resume("none", 0, clients)

    # Round trips: the same again for a few clients, with MONITOR on (it slows Redis down,
    # so nothing above was timed with it).
    close_all(clients)
    await asyncio.to_thread(_wait_count, a, b, 0)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(post_json, a.port, "/bench/send",
                            {"mode": "broadcast", "n": missed, "size": plan.message_size})
    watched = clients[:plan.monitor_clients]
    path = monitor_path
    monitor = redis.monitor(path)
    try:
        outcomes = await resume_all(watched, b.port)
        await asyncio.sleep(0.3)
    finally:
        monitor.stop()
    if any(seen != missed for _, seen, _ in outcomes):
        raise BenchError(f"a monitored resume did not replay {missed} messages: {outcomes}")
    commands = parse_monitor(path, scripts)
    per_resume = {name: count / len(watched) for name, count in commands.items()
                  if name not in BACKGROUND}
    values["round_trips"] = sum(per_resume.values())
    values.update({f"rt {name}": count for name, count in sorted(per_resume.items())})
    close_all(clients)
    values["foreign_pct"] = max(v for k, v in values.items() if k.startswith("foreign_pct_"))
    return values


def _wait_count(a: Server, b: Server, expected: int) -> None:
    for server in (a, b):
        if server.wait_count(expected, timeout=30.0) != expected:
            raise BenchError(f"replica on {server.port} still holds clients")


# --------------------------------------------------------------------------- report


def med(runs: list[Run], scenario: str, kind: str, key: str) -> float | None:
    clients = next((r.clients for r in runs if r.scenario == scenario), 0)
    return median_of(runs, scenario, kind, clients, key)


def worst(runs: list[Run], scenario: str, kind: str, key: str) -> float | None:
    values = [r.values[key] for r in runs
              if r.scenario == scenario and r.kind == kind and key in r.values]
    return max(values) if values else None


def report(runs: list[Run], plan: Plan, kinds: Sequence[str], scenarios: Sequence[str]) -> str:
    parts: list[str] = []
    if "cross" in scenarios:
        n = plan.cross_clients
        rows = []
        for kind in kinds:
            def m(key: str, k: str = kind) -> float | None:
                return med(runs, "cross", k, key)

            rows.append([kind, fmt(m("direct_p50_ms")), fmt(m("direct_p99_ms")),
                         ratio(m("direct_p99_ms"), med(runs, "cross", "raw", "direct_p99_ms")),
                         fmt(m("direct_max_ms")), fmt(m("direct_rate"), 0),
                         fmt(worst(runs, "cross", kind, "direct_lost"), 0),
                         fmt(m("direct_a_us"), 0), fmt(m("direct_b_us"), 0),
                         fmt(m("direct_redis_us"), 0)])
        parts.append(
            f"### Cross-replica direct messages at {plan.latency_rate:,.0f}/s "
            f"({plan.latency_messages:,} messages, A → {n:,} clients on B)\n\n" + table(
                ["contender", "p50 ms", "p99 ms", "p99 vs raw", "max ms", "sent/s", "lost",
                 "A CPU µs/msg", "B CPU µs/msg", "Redis CPU µs/msg"], rows))

        rows = []
        for kind in kinds:
            for senders in plan.throughput_senders:
                def t(key: str, k: str = kind, s: int = senders) -> float | None:
                    return med(runs, "cross", k, f"tput{s}_{key}")

                rows.append([kind, str(senders), fmt(t("delivered_per_s"), 0),
                             ratio(t("delivered_per_s"), t("delivered_per_s", "raw")),
                             fmt(t("sent_per_s"), 0),
                             fmt(worst(runs, "cross", kind, f"tput{senders}_lost"), 0),
                             fmt(t("p50_ms"), 1), fmt(t("p99_ms"), 1),
                             fmt(t("a_cpu_pct"), 0), fmt(t("b_cpu_pct"), 0),
                             fmt(t("redis_cpu_pct"), 0)])
        parts.append(
            f"### Cross-replica direct messages, as fast as A sends ({plan.throughput_messages:,}"
            " messages)\n\n" + table(
                ["contender", "sender tasks on A", "delivered/s", "vs raw", "sent/s", "lost",
                 "latency p50 ms", "p99 ms", "A CPU %", "B CPU %", "Redis CPU %"], rows))

        rows = []
        for kind in kinds:
            cross = med(runs, "cross", kind, "bcast_cross_b_us")
            local = med(runs, "cross", kind, "bcast_local_b_us")
            ratio_text = "n/a" if cross is None or not local else f"{cross / local:.2f}x"
            rows.append([kind, fmt(cross),
                         ratio(cross, med(runs, "cross", "raw", "bcast_cross_b_us")),
                         fmt(local), ratio_text,
                         fmt(med(runs, "cross", kind, "bcast_cross_a_ms"), 2),
                         fmt(max((worst(runs, "cross", kind, f"bcast_{w}_lost") or 0)
                                 for w in ("cross", "local")), 0)])
        parts.append(
            f"### Broadcast to {n:,} clients on B ({plan.broadcasts} broadcasts back to back): "
            "server CPU on B per delivery\n\n" + table(
                ["contender", "issued on A: B µs/delivery", "vs raw",
                 "issued on B: µs/delivery",
                 "cross / local", "A CPU ms / broadcast (cross)", "lost"], rows))
        lags = [(r.kind, r.values["presence_lag_s"]) for r in runs
                if r.scenario == "cross" and "presence_lag_s" in r.values
                and r.values["presence_lag_s"] > 0.2]
        if lags:
            parts.append("Clients missing from Redis presence after connecting (registration "
                         "failed; re-registered by the node's maintenance): waited "
                         + ", ".join(f"{k} {v:.1f}s" for k, v in lags) + ".")

    if "groups" in scenarios:
        rows = []
        group_kinds = [k for k in kinds if any(r.scenario == "groups" and r.kind == k
                                               for r in runs)]
        for kind in group_kinds:
            def g(key: str, k: str = kind) -> float | None:
                return med(runs, "groups", k, key)

            rows.append([kind] + [fmt(g(f"r{i}_us")) for i in range(plan.group_replicas)]
                        + [fmt(g("replicas_us")),
                           ratio(g("replicas_us"), med(runs, "groups", "raw", "replicas_us")),
                           fmt(g("redis_us")), fmt(g("all_p50_ms")), fmt(g("all_p99_ms")),
                           fmt(g("r0_p99_ms")), fmt(g("r1_p99_ms")),
                           fmt(worst(runs, "groups", kind, "lost"), 0),
                           fmt(g("join_errors"), 0), fmt(g("presence_lag_s"), 1)])
        header = (["contender"]
                  + [f"R{i}{' (sender)' if i == 0 else ''} µs/delivery"
                     for i in range(plan.group_replicas)]
                  + ["all replicas µs/delivery", "vs raw",
                     "Redis µs/delivery", "latency p50 ms", "p99 ms", "p99 on R0 (local)",
                     "p99 on R1", "lost", "join_group errors (retried)",
                     "presence lag s"])
        parts.append(
            f"### Group fan-out: 1 group of {plan.group_clients:,} members over "
            f"{plan.group_replicas} replicas, {plan.group_messages} messages at "
            f"{plan.group_rate:g}/s issued on R0\n\n" + table(header, rows))

    if "resume" in scenarios:
        rows = []
        resumers = resume_kinds(plan)
        for kind in resumers:
            for label, title in (("missed", f"{plan.resume_missed:,} missed"),
                                 ("none", "0 missed")):
                def r(key: str, lb: str = label, k: str = kind) -> float | None:
                    return med(runs, "resume", k, f"{lb}_{key}")

                rows.append(([kind] if len(resumers) > 1 else []) + [
                    title, fmt(r("ms_p50"), 1), fmt(r("ms_max"), 1), fmt(r("b_cpu_ms"), 1),
                    fmt(r("redis_cpu_ms"), 2), fmt(r("evalsha"), 1),
                    fmt(worst(runs, "resume", kind, f"{label}_wrong"), 0)])
        parts.append(
            f"### Resume ({plan.resume_clients} clients in turn, history_size "
            f"{plan.resume_history:,}, session on A, resumed on B)\n\n" + table(
                (["contender"] if len(resumers) > 1 else [])
                + ["case", "connect → resume frame p50 ms", "max ms", "B CPU ms / resume",
                   "Redis CPU ms / resume", "EVALSHA / resume (commandstats)",
                   "wrong replays"], rows))
        for kind in resumers:
            trips = [r for r in runs if r.scenario == "resume" and r.kind == kind
                     and "round_trips" in r.values]
            if trips:
                last = trips[-1].values
                listing = ", ".join(f"{k[3:]} × {v:g}" for k, v in last.items()
                                    if k.startswith("rt "))
                who = f"{kind}: " if len(resumers) > 1 else ""
                parts.append(f"{who}Redis round trips per resume ({plan.resume_missed:,} "
                             f"missed, MONITOR, {plan.monitor_clients} resumes): "
                             f"**{last['round_trips']:g}**: {listing}.")
    if "cross" in scenarios:
        parts.append("### Against the targets\n\n" + table(
            ["target", "measured here", "verdict"], targets(runs, plan)))
    if plan.baseline_label and plan.baseline_label in kinds:
        parts.append(before_after(runs, plan, scenarios, plan.baseline_label))
    parts += report_tail(runs, label=scenario_label)
    return "\n\n".join(parts)


def resume_kinds(plan: Plan) -> list[str]:
    """Contenders of the resume scenario: the stabilizer, and its baseline if any."""
    return ["stabilizer", *([plan.baseline_label] if plan.baseline_label else [])]


def before_after(runs: list[Run], plan: Plan, scenarios: Sequence[str], label: str) -> str:
    """Medians of the baseline and of the stabilizer side by side, with their ratio."""
    items: list[tuple[str, float | None, float | None, int]] = []

    def add(metric: str, scenario: str, key: str, digits: int) -> None:
        items.append((metric, med(runs, scenario, label, key),
                      med(runs, scenario, "stabilizer", key), digits))

    if "cross" in scenarios:
        rate = f"{plan.latency_rate:,.0f}/s"
        add(f"direct at {rate}: p50 ms", "cross", "direct_p50_ms", 2)
        add(f"direct at {rate}: p99 ms", "cross", "direct_p99_ms", 2)
        add(f"direct at {rate}: A CPU µs/msg", "cross", "direct_a_us", 0)
        add(f"direct at {rate}: B CPU µs/msg", "cross", "direct_b_us", 0)
        add(f"direct at {rate}: Redis CPU µs/msg", "cross", "direct_redis_us", 0)
        for senders in plan.throughput_senders:
            tasks = f"{senders} sender task{'s' if senders > 1 else ''}"
            add(f"direct, {tasks} on A: delivered/s (higher is better)", "cross",
                f"tput{senders}_delivered_per_s", 0)
        add("broadcast issued on A: B µs/delivery", "cross", "bcast_cross_b_us", 2)
        add("broadcast issued on B: µs/delivery", "cross", "bcast_local_b_us", 2)
    if "groups" in scenarios:
        add("group: all replicas µs/delivery", "groups", "replicas_us", 2)
        add("group: latency p99 ms", "groups", "all_p99_ms", 2)
    if "resume" in scenarios:
        add(f"resume, {plan.resume_missed:,} missed: ms p50", "resume", "missed_ms_p50", 1)
        add(f"resume, {plan.resume_missed:,} missed: B CPU ms", "resume", "missed_b_cpu_ms", 1)
        add("resume, 0 missed: ms p50", "resume", "none_ms_p50", 1)
        add("resume: Redis round trips", "resume", "round_trips", 0)
    return (f"### Before/after: stabilizer (work tree) vs {label} (median; CPU, latency: "
            "lower is better)\n\n" + compare_table(label, items))


def best_rate(runs: list[Run], kind: str, plan: Plan) -> tuple[float | None, int]:
    """The best median delivered rate without loss over the sender counts, and its count."""
    best: tuple[float | None, int] = (None, 0)
    for senders in plan.throughput_senders:
        rate = med(runs, "cross", kind, f"tput{senders}_delivered_per_s")
        lost = worst(runs, "cross", kind, f"tput{senders}_lost")
        if rate is not None and not lost and (best[0] is None or rate > best[0]):
            best = (rate, senders)
    return best


def targets(runs: list[Run], plan: Plan) -> list[list[str]]:
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "not met")

    rows = []
    ours = med(runs, "cross", "stabilizer", "direct_p99_ms")
    floor = med(runs, "cross", "raw", "direct_p99_ms")
    rows.append(["direct at 1,000/s: p99 ≤ floor's p99 + 1 ms",
                 f"stabilizer {fmt(ours)} ms, floor {fmt(floor)} ms",
                 verdict(None if ours is None or floor is None else ours <= floor + 1.0)])
    (ours, our_n), (theirs, their_n) = (best_rate(runs, "stabilizer", plan),
                                        best_rate(runs, "socketio", plan))
    floor, floor_n = best_rate(runs, "raw", plan)
    rows.append(["direct as fast as possible: ≥ 2x python-socketio (no loss)",
                 f"stabilizer {fmt(ours, 0)}/s ({our_n} senders), python-socketio "
                 f"{fmt(theirs, 0)}/s ({their_n}), floor {fmt(floor, 0)}/s ({floor_n}): "
                 + ("n/a" if ours is None or not theirs else f"{ours / theirs:.2f}x"),
                 verdict(None if ours is None or theirs is None else ours >= 2 * theirs)])
    cross = med(runs, "cross", "stabilizer", "bcast_cross_b_us")
    local = med(runs, "cross", "stabilizer", "bcast_local_b_us")
    rows.append(["cross-replica broadcast: B CPU per delivery ≤ 1.5x our local fan-out",
                 f"{fmt(cross)} µs vs {fmt(local)} µs local"
                 + ("" if cross is None or not local else f" ({cross / local:.2f}x)"),
                 verdict(None if cross is None or local is None else cross <= 1.5 * local)])
    return rows


def run_all(plan: Plan, kinds: Sequence[str], scenarios: Sequence[str],
            group_kinds: Sequence[str], log_dir: Path) -> list[Run]:
    runs: list[Run] = []
    for rep in range(plan.reps):
        if "cross" in scenarios:
            for kind in rotated(kinds, rep):
                runs.append(guarded(partial(cross_run, kind, plan, rep, log_dir),
                                    "cross", kind, plan.cross_clients, rep))
        if "groups" in scenarios:
            for kind in rotated(group_kinds, rep):
                runs.append(guarded(partial(group_run, kind, plan, rep, log_dir),
                                    "groups", kind, plan.group_clients, rep))
        if "resume" in scenarios:
            for kind in rotated(resume_kinds(plan), rep):
                runs.append(guarded(partial(resume_run, kind, plan, rep, log_dir),
                                    "resume", kind, plan.resume_missed, rep))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the stabilizer replicas on stabilizer/ as of git "
                             "revision REV (exported with git archive to bench/results/"
                             "baseline-*), as the contender stabilizer@<short REV>, in every "
                             "scenario and table next to stabilizer (the work tree), plus a "
                             "before/after table")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in CONTENDERS] + [
        s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown contender or scenario: {unknown}")

    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-cluster-{stamp}"
    env: dict[str, Any] = {}
    if args.baseline:
        try:
            env["baseline"] = export_baseline(args.baseline, stamp)
        except BenchError as exc:
            parser.error(str(exc))
        kinds = with_baseline(kinds, env["baseline"]["label"])
        plan = replace(plan, baseline_label=env["baseline"]["label"],
                       baseline_path=env["baseline"]["path"])
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), **env}
    # (script hashes for MONITOR are read from each contender's own copy: script_names)
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    try:
        runs = run_all(plan, kinds, scenarios, kinds, log_dir)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan, kinds, scenarios)
    out = args.out or RESULTS / f"cluster-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.cluster", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, redis-py "
          f"{_version('redis')}, python-socketio {env['python-socketio']}; total "
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
