"""Run one schedule against a fresh cluster, heal it, let it settle, and judge it.

Phases: start Redis, proxies and replicas; run the operations in order (a Together runs its
parts at once), recording everything; heal every fault and let the readers go; wait (bounded)
until the cluster is quiet; send a final broadcast, a final message to each group and to each
connected client, and wait (bounded) for them; check; close every client and wait (bounded)
until nothing is left; check again; stop the replicas and read their logs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults import checker
from tests.faults.actors import Clients
from tests.faults.cluster import NODE_TTL, SESSION_TTL, Cluster
from tests.faults.history import FaultRecord, History, MessageRecord, OpRecord
from tests.faults.schedule import (
    GROUPS,
    Connect,
    Disconnect,
    Fault,
    Membership,
    Op,
    Pause,
    Reader,
    Schedule,
    Send,
    Together,
    describe,
)
from tests.faults.views import Snapshot

QUIET_LIMIT = 30.0  # seconds the healed cluster gets to agree with its clients
MARKER_LIMIT = 10.0
MARKER_TRIES = 3  # a final message the library did not accept is sent again (bounded)
DRAIN_LIMIT = 10.0 + SESSION_TTL + NODE_TTL
POLL = 0.3
OP_LIMIT = 30.0  # one operation (a replica restart included) never takes longer
BULK_PAD = "x" * 32768
_RUNS = itertools.count(1)


@dataclass
class RunResult:
    """The outcome of one schedule."""

    seed: int
    history: bool
    operations: int
    faults: int
    violations: list[str]
    seconds: float
    code: str  # the stabilizer package the replicas ran
    kept: Path | None = None  # where the history and logs of a failing run were written
    counts: dict[str, int] = field(default_factory=dict)


class Runner:
    """Executes operations against a cluster and records what every client saw."""

    def __init__(self, schedule: Schedule, cluster: Cluster, log: Callable[[str], None]) -> None:
        self.schedule = schedule
        self.cluster = cluster
        self.history = History(schedule.seed, schedule.history)
        self.clients = Clients(self.history, cluster.ports, cluster.node_ids)
        self._numbers = itertools.count(1)
        self.last_number = 0
        self._log = log

    async def run_ops(self) -> None:
        """Every operation of the schedule, in order."""
        for index, op in enumerate(self.schedule.ops):
            record = OpRecord(index, describe(op), time.monotonic())
            self.history.ops.append(record)
            try:
                async with asyncio.timeout(OP_LIMIT):
                    record.outcome = await self._run(op)
            except TimeoutError:
                record.outcome = f"did not finish within {OP_LIMIT:g}s"
            record.ended = time.monotonic()
            self._log(f"  {index:3d} {record.text} -> {record.outcome}")

    async def _run(self, op: Op) -> str:
        if isinstance(op, Together):
            return " | ".join(await asyncio.gather(*(self._run(part) for part in op.ops)))
        if isinstance(op, Connect):
            records = await asyncio.gather(*(self.clients.connect(op.client, replica,
                                                                  resume=op.resume)
                                             for replica in op.replicas))
            return ", ".join(f"sid {r.sid}: " + (r.refused or f"resumed={r.resumed}"
                                                 if r.welcomed or r.refused else
                                                 f"closed {r.close_code}") for r in records)
        if isinstance(op, Disconnect):
            return await self.clients.disconnect(op.client, abrupt=op.abrupt)
        if isinstance(op, Reader):
            return self.clients.stall(op.client, stalled=op.stalled)
        if isinstance(op, Membership):
            return await self._membership(op)
        if isinstance(op, Send):
            return await self.send(op.via, op.target, bulk=op.bulk)
        if isinstance(op, Fault):
            done = await self.cluster.fault(op.kind, op.target, heal=op.heal, latency=op.latency)
            self.history.faults.append(FaultRecord(time.monotonic(), op.kind, op.target,
                                                   op.heal, done))
            return done
        if isinstance(op, Pause):
            await asyncio.sleep(op.seconds)  # part of the schedule: lets faults bite
            return "ok"
        raise TypeError(f"unknown operation {op!r}")

    async def _membership(self, op: Membership) -> str:
        verb = "join" if op.join else "leave"
        started = time.monotonic()
        status, body = await self.cluster.request(
            op.via, "POST", f"/faults/group/{op.group}/{verb}/{op.client}")
        self.history.memberships.append((started, time.monotonic(), op.client, op.group,
                                         op.join, status))
        return f"{status} {str(body)[:80]}"

    async def send(self, via: int, target: str | None, *, bulk: int = 0,
                   marker: bool = False) -> str:
        """One message (or `bulk` large broadcasts) through replica `via`; returns the
        replica's answer."""
        number = self.last_number = next(self._numbers)
        repeat = max(bulk, 1)
        records = [MessageRecord((number, r), target, via, time.monotonic(), marker=marker)
                   for r in range(repeat)]
        for record in records:
            self.history.messages[record.key] = record
        message: dict[str, object] = {"m": number}
        if bulk:
            message["pad"] = BULK_PAD
        if target is None:
            path, body = "/faults/broadcast", {"message": message, "repeat": repeat}
        elif target.startswith("g"):
            path, body = f"/faults/group/{target}/send", {"message": message}
        else:
            path, body = f"/faults/send/{target}", {"message": message}
        status, answer = await self.cluster.request(via, "POST", path, body)
        results = _results(answer, repeat)
        for record, result in zip(records, results, strict=True):
            record.ended, record.status = time.monotonic(), status
            record.definite = status == 200 and result.get("remote_error") is None and (
                result.get("sent", True) is True) and not result.get("failed_all")
            offset, epoch = result.get("offset"), result.get("epoch")
            record.offset = offset if isinstance(offset, int) else None
            record.epoch = epoch if isinstance(epoch, str) else None
        return f"m{number}: {status} {str(answer)[:100]}"

    async def markers(self, quiet: Snapshot) -> dict[str, int]:
        """The final broadcast, one message per group and one per connected client."""
        numbers: dict[str, int] = {}
        targets: list[str | None] = [None, *GROUPS,
                                     *sorted({r.client for r in self.history.open_sockets()})]
        for index, target in enumerate(targets):
            for _ in range(MARKER_TRIES):
                answer = await self.send(index % len(self.cluster.procs), target, marker=True)
                if self.history.messages[(self.last_number, 0)].definite:
                    break
                # the library said it failed (or could not tell: an op_timeout on a loaded
                # machine): what it refused says nothing of delivery; a later one must arrive
                self._log(f"  marker to {target or 'everyone'} not accepted: {answer}")
            numbers[target or "all"] = self.last_number
        return numbers

    def markers_arrived(self, numbers: dict[str, int], quiet: Snapshot) -> bool:
        """Every open socket got the final broadcast and its own final message, and each
        group's final message reached the open sockets of its members."""
        for record in self.history.open_sockets():
            got = {frame.key for frame in record.frames}
            wanted = ["all", record.client] + [g for g in GROUPS
                                               if record.client in quiet.redis.groups.get(g, ())]
            if any((numbers[name], 0) not in got for name in wanted if name in numbers):
                return False
        return True


def _results(answer: object, repeat: int) -> list[dict[str, object]]:
    if isinstance(answer, dict):
        results = answer.get("results")
        if isinstance(results, list) and len(results) == repeat:
            return [r if isinstance(r, dict) else {} for r in results]
        return [answer] * repeat
    return [{"remote_error": str(answer)}] * repeat


def consistent(snap: Snapshot, history: History) -> bool:
    """The quiet condition: every replica answers with its backend up and its subscriptions
    back, and presence, the replicas' views and their pools all match the sockets the
    clients hold open, and no group lists a client with neither (a membership written for
    a client the store did not know, after an empty restart, ends by design only once a
    grace of twice node_ttl has passed: the sweep of orphans; QUIET_LIMIT bounds the wait,
    and one that never ends is then flagged)."""
    if snap.redis.error or not all(view.answered for view in snap.replicas):
        return False
    if any(checker.stray_members(history, snap, group) for group in snap.redis.groups):
        return False
    opened = {r.client: (r.node_id, r.conn_id) for r in history.open_sockets()}
    if len(opened) != len(history.open_sockets()) or snap.redis.presence != opened:
        return False
    subscribers = snap.redis.subscribers  # every replica hears broadcasts and its own channel
    if subscribers.get("all") != len(snap.replicas) or any(
            subscribers.get(f"n:{view.node_id}") != 1 for view in snap.replicas):
        return False
    for view in snap.replicas:
        assert view.cluster is not None
        assert view.local is not None
        here = {c: conn for c, (node, conn) in opened.items() if node == view.node_id}
        if (not view.local.get("backend_available", True) or view.local["pool"] != here
                or {c: tuple(w) for c, w in view.cluster["clients"].items()} != opened):
            return False
    return True


def drained(snap: Snapshot, history: History) -> bool:
    """Nothing left anywhere once every client has gone."""
    return not checker.check_drained(history, snap)


async def settle(cluster: Cluster, history: History, done: Callable[[Snapshot, History], bool],
                 limit: float) -> tuple[Snapshot, float]:
    """Poll until `done` holds on two snapshots in a row that agree, or `limit` passes;
    return the last snapshot and the seconds it took."""
    started = time.monotonic()
    previous = None
    while True:
        snap = await cluster.snapshot()
        stable = previous is not None and snap.signature() == previous.signature()
        if (stable and done(snap, history)) or time.monotonic() - started > limit:
            return snap, time.monotonic() - started
        previous = snap
        await asyncio.sleep(POLL)  # bounded polling of observable state


async def wait_for(condition: Callable[[], bool], limit: float) -> bool:
    """Poll `condition` until it holds or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_schedule(schedule: Schedule, *, log: Callable[[str], None] = print,
                       keep: Path | None = None) -> RunResult:
    """Run `schedule` on a fresh cluster and judge it."""
    started = time.monotonic()
    namespace = f"faults{os.getpid()}-{schedule.seed}-{next(_RUNS)}"
    cluster = Cluster(history=schedule.history, namespace=namespace)
    runner = Runner(schedule, cluster, log)
    violations: list[str] = []
    code = "?"
    try:
        await cluster.start()
        first = (await cluster.request(0, "GET", "/faults/local"))[1]
        code = str(first.get("stabilizer")) if isinstance(first, dict) else "?"
        log(f"seed {schedule.seed}: history {'on' if schedule.history else 'off'}, "
            f"{len(schedule.ops)} operations, replicas run {code}")
        await runner.run_ops()
        violations = await _judge(runner, log)
    finally:
        runner.clients.resume_all()
        await runner.clients.close_all()
        await cluster.stop()
    violations += checker.check_logs(cluster.log_texts())
    counts = schedule.counts()
    result = RunResult(schedule.seed, schedule.history, sum(counts.values()),
                       sum(n for k, n in counts.items() if k.startswith("fault:")),
                       violations, time.monotonic() - started, code, counts=counts)
    if violations:
        result.kept = _keep(runner.history, cluster, keep, violations)
    else:
        cluster.discard_logs()
    return result


async def _judge(runner: Runner, log: Callable[[str], None]) -> list[str]:
    cluster, history = runner.cluster, runner.history
    await cluster.heal_all()
    runner.clients.resume_all()
    quiet, took = await settle(cluster, history, consistent, QUIET_LIMIT)
    log(f"  healed; quiet after {took:.1f}s")
    numbers = await runner.markers(quiet)
    await wait_for(lambda: runner.markers_arrived(numbers, quiet), MARKER_LIMIT)
    final, _ = await settle(cluster, history, consistent, POLL * 4)
    violations = checker.check_final(history, final, numbers)
    await runner.clients.close_all()
    empty, took = await settle(cluster, history, drained, DRAIN_LIMIT)
    log(f"  clients closed; drained after {took:.1f}s")
    return violations + checker.check_drained(history, empty)


def _keep(history: History, cluster: Cluster, keep: Path | None,
          violations: list[str]) -> Path:
    folder = keep or Path(tempfile.mkdtemp(prefix=f"faults-seed{history.seed}-"))
    folder.mkdir(parents=True, exist_ok=True)
    history.to_json(folder / "history.json")
    (folder / "violations.txt").write_text("\n".join(violations) + "\n", encoding="utf-8")
    for label, text in cluster.log_texts():
        (folder / f"{label}.log").write_text(text, encoding="utf-8")
    return folder
