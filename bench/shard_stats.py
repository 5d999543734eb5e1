"""The pure half of ``bench.shards``: its plan, and reading what each Redis Cluster master
reports (``CLUSTER NODES``, ``INFO commandstats``) into per-master shares and a verdict.

What is counted
---------------
Redis counts every command it executes in ``INFO commandstats``, including the commands a
Lua script runs: one SEQUENCE script shows as one ``evalsha`` plus its ``hget``,
``hincrby``, ``xadd``, ``pexpire`` and ``spublish`` calls (checked on Redis 7.0: an
``EVAL`` that calls ``SPUBLISH`` and ``HINCRBY`` adds one call to each of the three). So
a count is a count of executed commands, the unit of work of a master, not of round trips.

* **data commands** ("group commands" in the report): every executed command except the
  housekeeping ones (:data:`HOUSEKEEPING`: connection set-up, cluster topology, pub/sub
  subscriptions, script loading, the benchmark's own INFO/CONFIG/SCAN/DBSIZE). The
  benchmark keeps the managers' maintenance (keepalive, session sweep, memory checks) out
  of the measured window, so inside it these are the commands of the workload itself: the
  group sends, joins, leaves and presence updates, whatever key layout the measured code
  uses. A complement rather than a list of names, so a command a future layout adds is
  still counted.
* **scripts**: the top-level script calls among them (``eval``, ``evalsha``, ``fcall`` and
  their ``_ro`` forms): the round trips that carry the sequencing and membership logic.
* **publishes**: ``spublish`` (the library publishes with SPUBLISH on a Cluster, from a
  client or from a script) plus ``publish``: the group pub/sub traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

SCENARIOS: Final = ("history", "plain", "membership")
REPLICAS: Final = 3


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


#: Commands that are not work on the workload's keys (matched on the part before ``|``).
HOUSEKEEPING: Final = frozenset({
    "auth", "hello", "ping", "echo", "select", "quit", "reset", "readonly", "readwrite",
    "client", "cluster", "command", "config", "info", "dbsize", "scan", "debug", "memory",
    "latency", "slowlog", "monitor", "script", "function",
    "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe",
    "pubsub",
})
SCRIPTS: Final = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
PUBLISHES: Final = frozenset({"spublish", "publish"})
#: The goal of an even spread over three masters: each share within 100/3 ± 10 points.
GOAL_TOLERANCE: Final = 10.0


@dataclass(frozen=True, slots=True)
class Calls:
    """One command's counters on one master."""

    calls: int
    usec: int


@dataclass(frozen=True, slots=True)
class Master:
    """One master of the cluster: its port and the slot ranges it serves."""

    port: int
    slots: tuple[tuple[int, int], ...]

    @property
    def slot_count(self) -> int:
        """How many of the 16384 slots it serves."""
        return sum(end - start + 1 for start, end in self.slots)

    @property
    def label(self) -> str:
        """Its slot ranges, e.g. ``0-5460``: stable across fresh clusters of one size."""
        return ",".join(f"{start}-{end}" for start, end in self.slots)

    def serves(self, slot: int) -> bool:
        """True when `slot` is one of its slots."""
        return any(start <= slot <= end for start, end in self.slots)


@dataclass(frozen=True, slots=True)
class Tally:
    """One master's totals over a window."""

    commands: int  # every command, housekeeping included
    data: int  # data commands (the report's "group commands")
    data_usec: int
    scripts: int
    publishes: int


def parse_cluster_nodes(text: str) -> list[Master]:
    """The masters that serve slots in a ``CLUSTER NODES`` reply, ordered by first slot.

    Each line: ``id host:port@bus flags master ping pong epoch link slot...``; a slot item
    is ``n`` or ``a-b``; ``[n->-id]`` / ``[n-<-id]`` (a slot being migrated) is skipped.
    """
    masters = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or "master" not in fields[2].split(","):
            continue
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        if slots:
            masters.append(Master(port, tuple(sorted(slots))))
    return sorted(masters, key=lambda master: master.slots[0][0])


def command_calls(info: Mapping[str, Any]) -> dict[str, Calls]:
    """``INFO commandstats`` as redis-py returns it (``{"cmdstat_xadd": {"calls": 3,
    "usec": 9, ...}}``) -> ``{"xadd": Calls(3, 9)}``; subcommands keep their ``|`` name
    (``config|resetstat``)."""
    found = {}
    for name, stats in info.items():
        if not name.startswith("cmdstat_") or not isinstance(stats, Mapping):
            continue
        found[name.removeprefix("cmdstat_").lower()] = Calls(int(stats.get("calls", 0)),
                                                             int(stats.get("usec", 0)))
    return found


def is_housekeeping(command: str) -> bool:
    """True for a command that is no work on the workload's keys (see HOUSEKEEPING)."""
    return command.partition("|")[0] in HOUSEKEEPING


def tally(calls: Mapping[str, Calls]) -> Tally:
    """One master's totals from its command counters."""
    data = {name: c for name, c in calls.items() if not is_housekeeping(name)}
    return Tally(
        commands=sum(c.calls for c in calls.values()),
        data=sum(c.calls for c in data.values()),
        data_usec=sum(c.usec for c in data.values()),
        scripts=sum(c.calls for name, c in data.items() if name in SCRIPTS),
        publishes=sum(c.calls for name, c in data.items() if name in PUBLISHES),
    )


def shares(values: Sequence[float]) -> list[float | None]:
    """Each value in % of their sum; None for every one when the sum is 0 (nothing ran)."""
    total = sum(values)
    if total <= 0:
        return [None] * len(values)
    return [value / total * 100.0 for value in values]


def within_goal(values: Iterable[float | None], masters: int = 3,
                tolerance: float = GOAL_TOLERANCE) -> bool | None:
    """True when every share is within 100/masters ± tolerance points; None when a share
    is missing (nothing of that kind ran)."""
    listed = list(values)
    if not listed or any(value is None for value in listed):
        return None
    goal = 100.0 / masters
    return all(abs(value - goal) <= tolerance for value in listed if value is not None)



def master_values(per_master: Sequence[Mapping[str, Calls]]) -> dict[str, float]:
    """The figures a run records, master by master (index i in slot order): for each kind
    (``all``, ``data``, ``usec``, ``scripts``, ``publishes``) ``m<i>_<kind>_n``, the count,
    and ``m<i>_<kind>_pct``, its share of the kind's total (left out when the total is 0)."""
    tallies = [tally(calls) for calls in per_master]
    values: dict[str, float] = {}
    for kind, counts in (("all", [t.commands for t in tallies]),
                         ("data", [t.data for t in tallies]),
                         ("usec", [t.data_usec for t in tallies]),
                         ("scripts", [t.scripts for t in tallies]),
                         ("publishes", [t.publishes for t in tallies])):
        for index, (count, share) in enumerate(zip(counts, shares(counts), strict=True)):
            values[f"m{index}_{kind}_n"] = count
            if share is not None:
                values[f"m{index}_{kind}_pct"] = share
    return values
