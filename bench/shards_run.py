"""The measuring half of ``bench.shards`` (see its docstring for the method): three
in-process replicas on the cluster, the workload, and the counters read from each master.
It imports ``stabilizer``, so ``bench.shards`` imports it only once the import path is set.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

from bench.core import Run, log
from bench.harness import ForeignLoad
from bench.shard_stats import REPLICAS, Master, Plan, command_calls, master_values
from stabilizer import WebSocketConfig, WebSocketConnectionManager, WebSocketStabilizerError
from tests.support.redis_server import RedisClusterServers

PAYLOAD: Final = "m" * 64


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


@dataclass
class Window:
    """What one measured window produced, read right after it."""

    stats: list[dict[str, Any]]
    outcomes: list[tuple[int, int]]
    elapsed: float
    foreign_pct: float
    keys: dict[str, list[int]]


async def window(scenario: str, plan: Plan, rep: int,
                 managers: Sequence[WebSocketConnectionManager], admin: Admin,
                 redis_pids: Sequence[int], ops: dict[str, int]) -> Window:
    """Reset the counters, run every replica's workload for the window, read the counters
    (first: no command of ours runs in between) and then the keys."""
    jobs = [workload(scenario, manager, index, plan, random.Random(rep * 1000 + index), ops)
            for index, manager in enumerate(managers)]
    await admin.reset_stats()
    foreign = ForeignLoad(redis_pids)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(pace(job, plan.rate / REPLICAS, plan.seconds)
                                      for job in jobs))
    elapsed = time.monotonic() - started
    stats = await admin.commandstats()
    foreign_pct = foreign.percent()
    keys = {"group_keys": await admin.keys("*busy-*"),
            "member_keys": await admin.keys("*member-*"), "dbsize": await admin.dbsize()}
    return Window(stats, list(outcomes), elapsed, foreign_pct, keys)


async def measure(scenario: str, plan: Plan, rep: int, url: str, masters: Sequence[Master],
                  redis_pids: Sequence[int]) -> tuple[dict[str, float], dict[str, Any]]:
    """One run on the (flushed) cluster: (values, notes) for its Run."""
    admin = Admin(masters)
    managers = [replica(index, scenario, plan, url) for index in range(REPLICAS)]
    sink = Sink()
    ops = dict.fromkeys(("sends", "joins", "leaves", "updates"), 0)
    try:
        await admin.flush()
        for manager in managers:
            await manager.start()
        await seat(managers, plan, sink, presence=scenario == "membership")
        frames_before = sink.frames
        seen = await window(scenario, plan, rep, managers, admin, redis_pids, ops)
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
    done = sum(outcome[0] for outcome in seen.outcomes)
    values: dict[str, float] = {
        "operations": done, "failed": sum(outcome[1] for outcome in seen.outcomes),
        "rate": done / seen.elapsed, "window_s": seen.elapsed, "foreign_pct": seen.foreign_pct,
        **{key: float(count) for key, count in ops.items()},
    }
    if scenario != "membership":
        values.update(expected=expected, delivered=delivered)
    calls = [command_calls(info) for info in seen.stats]
    values.update(master_values(calls))
    for key, counts in seen.keys.items():
        values.update({f"m{index}_{key}": count for index, count in enumerate(counts)})
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
