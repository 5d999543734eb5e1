"""How the masters of a Redis Cluster share the group traffic (issue 15, item 4).

Usage::

    python -m bench.shards --quick    # 30 groups, 3 s windows, one repetition
    python -m bench.shards            # 300 groups, 20 s windows, 3 repetitions
    python -m bench.shards --groups 300 --seconds 20 --repetitions 3 --scenarios history

It imports ``stabilizer`` from the import path (set PYTHONPATH to the tree to measure), so it
measures any version of the key layout.

Method. One real three-master Redis Cluster (``tests/support/redis_server.py``) serves every
run; each run flushes it first. Three replicas run as three ``WebSocketConnectionManager``
instances in this process, on one event loop, each with its own node id, Redis Cluster
client, connection pool and listener (``redis_cluster=True``): where a command lands
depends on its keys, not on which process sends it, so in-process replicas measure the
distribution as separate processes would, at a fraction of the set-up. Their sockets are
counting sinks (no network). ``groups`` busy groups ``busy-NNNN`` get ``members`` members
each (``member-NNNN-K``), connected to replica K mod 3 and joined there. Maintenance
(keepalive, session sweep, memory checks) is pushed out of the window (node_ttl and
memory_check_interval of an hour; heartbeats off). Then ``CONFIG RESETSTAT`` on every
master, the measured window, and ``INFO commandstats`` from every master right after it.

Scenarios, each ``seconds`` long, every replica issuing its share of ``rate`` operations
per second at a steady pace, each on a random group (seeded by repetition and replica):

* ``history``: ``send_to_group`` with history on (history_size > 0: the SEQUENCE script
  appends to the group's stream and SPUBLISHes from Lua);
* ``plain``: ``send_to_group`` with history off (one SPUBLISH on the group's channel);
* ``membership``: members joined with presence metadata; each operation is, in turn,
  ``update_presence`` or ``leave_group`` + ``join_group`` (with presence) of the replica's
  own member of the group.

Per master: the slots it serves, its share of all commands, of the data commands ("group
commands": everything but housekeeping, scripts' inner commands included; see
bench/shard_stats.py for the definition), of their execution time (usec), of the top-level
script calls, and of the publishes (``spublish`` + ``publish``), and its keys (DBSIZE, and a
SCAN count of the keys naming a group or a member). The goal of a layout that puts each
group in its own slot: each master's share 33% ± 10 points. Figures are medians over the
repetitions with their range; every repetition goes to ``bench/results/shards-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Final

import redis
from redis.asyncio import Redis

import stabilizer
from bench.core import RESULTS, Run, environment, guarded, log
from bench.harness import REPO, ForeignLoad, install_cleanup, stop_all
from bench.shard_stats import Master, command_calls, parse_cluster_nodes, shares, tally
from bench.shards_report import report
from stabilizer import WebSocketConfig, WebSocketConnectionManager, WebSocketStabilizerError
from tests.support.redis_server import RedisClusterServers

SCENARIOS: Final = ("history", "plain", "membership")
REPLICAS: Final = 3
PAYLOAD: Final = "m" * 64


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    reps: int
    groups: int = 300
    members: int = 3  # per group, on replicas 0, 1, 2, 0, ...
    seconds: float = 20.0
    rate: float = 300.0  # operations per second over all replicas
    history_size: int = 100
    namespace: str = "bench"
    delivery_timeout: float = 30.0


FULL: Final = Plan(reps=3)
QUICK: Final = Plan(reps=1, groups=30, seconds=3.0, rate=100.0)


def group_name(index: int) -> str:
    return f"busy-{index:04d}"


def member_id(group: int, member: int) -> str:
    return f"member-{group:04d}-{member}"


class Sink:
    """Counts the frames every member socket receives; wakes a waiter at a target."""

    def __init__(self) -> None:
        self.frames = 0
        self._target: int | None = None
        self._reached = asyncio.Event()

    def add(self) -> None:
        self.frames += 1
        if self._target is not None and self.frames >= self._target:
            self._reached.set()

    async def wait_for(self, target: int, timeout: float) -> int:
        """Return the frame count once it reaches `target`, or when `timeout` passed."""
        self._target = target
        if self.frames < target:
            try:
                async with asyncio.timeout(timeout):
                    await self._reached.wait()
            except TimeoutError:
                pass
        return self.frames


class SinkSocket:
    """The part of a WebSocket the manager uses; every frame is counted, then dropped."""

    application_state = None

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def send(self, message: Any) -> None:
        self._sink.add()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        return None


class Admin:
    """One plain connection per master, for the benchmark's own commands."""

    def __init__(self, masters: Sequence[Master]) -> None:
        self.clients = [Redis(host="127.0.0.1", port=m.port) for m in masters]

    async def flush(self) -> None:
        for client in self.clients:
            await client.flushall()

    async def reset_stats(self) -> None:
        for client in self.clients:
            await client.config_resetstat()

    async def commandstats(self) -> list[dict[str, Any]]:
        return [dict(await client.info("commandstats")) for client in self.clients]

    async def keys(self, pattern: str) -> list[int]:
        """How many keys matching `pattern` each master holds (SCAN on that master)."""
        counts = []
        for client in self.clients:
            counts.append(sum([1 async for _ in client.scan_iter(match=pattern, count=1000)]))
        return counts

    async def dbsize(self) -> list[int]:
        return [int(await client.dbsize()) for client in self.clients]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def replica(index: int, scenario: str, plan: Plan, url: str) -> WebSocketConnectionManager:
    history = plan.history_size if scenario == "history" else 0
    return WebSocketConnectionManager(WebSocketConfig(
        heartbeat_interval=3600.0, heartbeat_timeout=7200.0, node_ttl=3600.0,
        memory_check_interval=3600.0, redis_url=url, redis_cluster=True,
        namespace=plan.namespace, node_id=f"replica-{index}", history_size=history))


async def seat(managers: Sequence[WebSocketConnectionManager], plan: Plan, sink: Sink, *,
               presence: bool) -> None:
    """Connect every member to its replica and join it to its group there."""
    gate = asyncio.Semaphore(32)

    async def one(group: int, member: int) -> None:
        manager = managers[member % len(managers)]
        client = member_id(group, member)
        async with gate:
            await manager.connect(client, SinkSocket(sink))
            await manager.join_group(client, group_name(group),
                                     presence={"member": member} if presence else None)

    await asyncio.gather(*(one(g, k) for g in range(plan.groups) for k in range(plan.members)))


async def pace(operation: Callable[[int], Awaitable[None]], rate: float,
               seconds: float) -> tuple[int, int]:
    """Run operation(0), operation(1), ... at `rate` per second for `seconds` (back to back
    when behind, never past the window); return (done, failed)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    done = failed = 0
    step = 0
    while (due := start + step / rate) < end and loop.time() < end:
        if due > loop.time():
            await asyncio.sleep(due - loop.time())  # pacing, not synchronisation
        try:
            await operation(step)
            done += 1
        except WebSocketStabilizerError:
            failed += 1
        step += 1
    return done, failed


def workload(scenario: str, manager: WebSocketConnectionManager, index: int, plan: Plan,
             rng: random.Random, ops: dict[str, int]) -> Callable[[int], Awaitable[None]]:
    """One replica's operation number `step`, on a random group."""
    own = [k for k in range(plan.members) if k % REPLICAS == index]

    async def send(step: int) -> None:
        await manager.send_to_group(group_name(rng.randrange(plan.groups)), PAYLOAD)
        ops["sends"] += 1

    async def churn(step: int) -> None:
        group = rng.randrange(plan.groups)
        member = rng.choice(own)
        client, name = member_id(group, member), group_name(group)
        if step % 2 == 0:
            await manager.update_presence(client, name, {"member": member, "step": step})
            ops["updates"] += 1
        else:
            await manager.leave_group(client, name)
            ops["leaves"] += 1
            await manager.join_group(client, name, presence={"member": member})
            ops["joins"] += 1

    return churn if scenario == "membership" else send


async def measure(scenario: str, plan: Plan, rep: int, url: str, masters: Sequence[Master],
                  redis_pids: Sequence[int]) -> tuple[dict[str, float], dict[str, Any]]:
    """One run on the (flushed) cluster: (values, notes) for its Run."""
    admin = Admin(masters)
    managers = [replica(index, scenario, plan, url) for index in range(REPLICAS)]
    sink = Sink()
    try:
        await admin.flush()
        for manager in managers:
            await manager.start()
        await seat(managers, plan, sink, presence=scenario == "membership")
        ops = dict.fromkeys(("sends", "joins", "leaves", "updates"), 0)
        jobs = [workload(scenario, manager, index, plan, random.Random(rep * 1000 + index), ops)
                for index, manager in enumerate(managers)]
        await admin.reset_stats()
        frames_before = sink.frames
        foreign = ForeignLoad(redis_pids)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(pace(job, plan.rate / REPLICAS, plan.seconds)
                                          for job in jobs))
        elapsed = time.monotonic() - started
        stats = await admin.commandstats()  # first: nothing of ours runs in between
        foreign_pct = foreign.percent()
        group_keys = await admin.keys("*busy-*")
        member_keys = await admin.keys("*member-*")
        dbsize = await admin.dbsize()
        expected = ops["sends"] * plan.members
        delivered = await sink.wait_for(frames_before + expected,
                                        plan.delivery_timeout) - frames_before
    finally:
        for manager in managers:
            try:
                await manager.graceful_shutdown(timeout=2.0)
            except WebSocketStabilizerError as exc:
                log(f"replica shutdown: {exc!r}")
        await admin.aclose()
    done = sum(outcome[0] for outcome in outcomes)
    values: dict[str, float] = {
        "operations": done, "failed": sum(outcome[1] for outcome in outcomes),
        "rate": done / elapsed, "window_s": elapsed, "foreign_pct": foreign_pct,
        **{key: float(count) for key, count in ops.items()},
    }
    if scenario != "membership":
        values.update(expected=expected, delivered=delivered)
    calls = [command_calls(info) for info in stats]
    tallies = [tally(c) for c in calls]
    for metric, counts in (("all", [t.commands for t in tallies]),
                           ("data", [t.data for t in tallies]),
                           ("usec", [t.data_usec for t in tallies]),
                           ("scripts", [t.scripts for t in tallies]),
                           ("publishes", [t.publishes for t in tallies])):
        for index, share in enumerate(shares(counts)):
            values[f"m{index}_{metric}_n"] = counts[index]
            if share is not None:
                values[f"m{index}_{metric}_pct"] = share
    for index in range(len(masters)):
        values[f"m{index}_group_keys"] = group_keys[index]
        values[f"m{index}_member_keys"] = member_keys[index]
        values[f"m{index}_dbsize"] = dbsize[index]
    notes = {"commands": [{name: c.calls for name, c in sorted(per.items())} for per in calls]}
    return values, notes


def shard_run(scenario: str, plan: Plan, rep: int, cluster: RedisClusterServers,
              masters: Sequence[Master]) -> Run:
    run = Run(scenario, "stabilizer", plan.groups, rep)
    pids = [node.process.pid for node in cluster.nodes if node.process is not None]
    values, notes = asyncio.run(measure(scenario, plan, rep, cluster.url, masters, pids))
    run.values.update(values)
    run.notes.update(notes)
    return run


def topology(cluster: RedisClusterServers, namespace: str) -> tuple[list[Master], int]:
    """The masters, ordered by first slot, and the slot of the namespace's hash tag."""
    with redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port) as client:
        nodes = client.execute_command("CLUSTER", "NODES")
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", f"{{{namespace}}}"))
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    return parse_cluster_nodes(text), slot


def code_identity() -> dict[str, Any]:
    """Which stabilizer was imported (the measured code), and its git commit if any."""
    import subprocess
    from pathlib import Path

    root = Path(stabilizer.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {"stabilizer_path": str(root), "stabilizer_commit": git("rev-parse", "--short",
                                                                   "HEAD"),
            "stabilizer_uncommitted": git("status", "--porcelain", "--",
                                          "stabilizer").splitlines()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards",
                                     description=__doc__.split("\n\n", 1)[0] if __doc__
                                     else None)
    parser.add_argument("--quick", action="store_true", help="30 groups, 3 s, one repetition")
    parser.add_argument("--groups", type=int, help="busy groups (default 300, quick 30)")
    parser.add_argument("--seconds", type=float, help="measured window (default 20, quick 3)")
    parser.add_argument("--repetitions", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--rate", type=float, help="operations per second over the replicas "
                        "(default 300, quick 100)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"a subset of {','.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    changes = {"groups": args.groups, "seconds": args.seconds, "reps": args.repetitions,
               "rate": args.rate}
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if plan.groups < 1 or plan.seconds <= 0 or plan.reps < 1 or plan.rate <= 0:
        parser.error("groups, seconds, repetitions and rate must be positive")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown scenario: {unknown}")

    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = {**environment(), **code_identity()}
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    runs: list[Run] = []
    try:
        with RedisClusterServers(masters=3) as cluster:
            masters, ns_slot = topology(cluster, plan.namespace)
            log(f"masters: {[(m.port, m.label) for m in masters]}; {{{plan.namespace}}} is "
                f"slot {ns_slot}")
            for rep in range(plan.reps):
                for scenario in scenarios:
                    runs.append(guarded(partial(shard_run, scenario, plan, rep, cluster,
                                                masters), scenario, "stabilizer",
                                        plan.groups, rep))
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan.groups, scenarios, masters, ns_slot, plan.namespace)
    out = RESULTS / f"shards-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "masters": [{"port": m.port, "slots": m.slots} for m in masters],
        "namespace_slot": ns_slot,
        "command": " ".join(["python -m bench.shards", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}; total "
          f"{elapsed:.0f}s\nstabilizer imported from {env['stabilizer_path']} at "
          f"{env['stabilizer_commit']}"
          f"{' + uncommitted changes' if env['stabilizer_uncommitted'] else ''}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
