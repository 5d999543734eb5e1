"""Random operation schedules from a seed (pure: no I/O, the same seed gives the same list).

A schedule is what clients and faults do, in order. The generator keeps a rough model of
the cluster (which replica a client last connected to, which faults are on) only to make
likely choices (join through the client's own replica half the time, heal what it broke);
what really happens is observed by the runner and judged by the checker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

CLIENTS: Final = tuple(f"c{index}" for index in range(6))
GROUPS: Final = ("g0", "g1", "g2")
REPLICAS: Final = 3
DEFAULT_OPS: Final = 80

# one replica's Redis connections: slowed, stalled, reset; or only its pub/sub ones reset,
# with its new subscriptions reset too (unsub) or kept waiting (subhold)
PROXY_FAULTS: Final = ("latency", "stall", "cut", "unsub", "subhold")
REDIS_FAULTS: Final = ("pause", "restart")  # redis-server itself: SIGSTOP/SIGCONT, kill+start
REPLICA_FAULTS: Final = ("kill",)  # SIGKILL a replica, start it again later


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a socket for `client` on each of `replicas` at the same moment; with `resume`,
    present the client's newest token and its positions."""

    client: str
    replicas: tuple[int, ...]
    resume: bool


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the client's newest open socket: a close frame, or a TCP abort (`abrupt`)."""

    client: str
    abrupt: bool


@dataclass(frozen=True, slots=True)
class Reader:
    """Stop (`stalled`) or go on reading the client's newest socket."""

    client: str
    stalled: bool


@dataclass(frozen=True, slots=True)
class Membership:
    """join_group / leave_group of `client`, asked of replica `via`."""

    client: str
    group: str
    via: int
    join: bool


@dataclass(frozen=True, slots=True)
class Send:
    """A message through replica `via`: to everyone (`target` None), a group ("g...") or a
    client ("c..."); `bulk` > 0 sends that many large broadcasts (to overflow stalled
    readers)."""

    via: int
    target: str | None
    bulk: int = 0


@dataclass(frozen=True, slots=True)
class Fault:
    """Start (`heal` False) or end a fault: `kind` from PROXY_FAULTS (target: a replica
    index), REDIS_FAULTS (target -1) or REPLICA_FAULTS (target: a replica index)."""

    kind: str
    target: int
    heal: bool
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class Pause:
    """Let time pass (faults bite, timeouts fire, reaping happens)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Together:
    """Run these operations concurrently."""

    ops: tuple[Op, ...]


Op = Connect | Disconnect | Reader | Membership | Send | Fault | Pause | Together


@dataclass(frozen=True, slots=True)
class Schedule:
    """One run: its seed, whether the replicas keep history, and the operations."""

    seed: int
    history: bool
    ops: tuple[Op, ...]

    def counts(self) -> dict[str, int]:
        """Operations by kind (a Together counts its parts), faults counted when started."""
        counts: dict[str, int] = {}
        for op in _flatten(self.ops):
            if isinstance(op, Fault) and op.heal:
                continue
            name = f"fault:{op.kind}" if isinstance(op, Fault) else type(op).__name__.lower()
            counts[name] = counts.get(name, 0) + 1
        return counts


def _flatten(ops: tuple[Op, ...]) -> list[Op]:
    flat: list[Op] = []
    for op in ops:
        flat.extend(_flatten(op.ops) if isinstance(op, Together) else [op])
    return flat


@dataclass
class _Model:
    """The generator's guess of the cluster, to bias choices (never checked)."""

    where: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(CLIENTS))
    seen: set[str] = field(default_factory=set)
    faults: dict[tuple[str, int], int] = field(default_factory=dict)  # -> ops left before heal
    stalled: set[str] = field(default_factory=set)


def generate(seed: int, ops: int = DEFAULT_OPS) -> Schedule:
    """The schedule of `seed`: about `ops` operations, then every fault healed."""
    rng = random.Random(seed)
    history = rng.random() < 0.5
    model = _Model()
    out: list[Op] = []
    while len(out) < ops:
        out.extend(_heal_due(model))
        if rng.random() < 0.06:
            out.append(Together(tuple(_one(rng, model) for _ in range(2))))
        else:
            out.append(_one(rng, model))
    out.extend(_heal(key) for key in sorted(model.faults))
    out.extend(Reader(client, stalled=False) for client in sorted(model.stalled))
    return Schedule(seed, history, tuple(out))


def _heal_due(model: _Model) -> list[Op]:
    healed: list[Op] = []
    for key in sorted(model.faults):
        model.faults[key] -= 1
        if model.faults[key] <= 0:
            del model.faults[key]
            healed.append(_heal(key))
    return healed


def _heal(key: tuple[str, int]) -> Fault:
    return Fault(key[0], key[1], heal=True)


def _one(rng: random.Random, model: _Model) -> Op:
    roll = rng.random()
    if roll < 0.22:
        return _connect(rng, model)
    if roll < 0.30:
        return _disconnect(rng, model)
    if roll < 0.34:
        return _reader(rng, model)
    if roll < 0.48:
        return _membership(rng, model)
    if roll < 0.74:
        return _send(rng, model)
    if roll < 0.88:
        return _fault(rng, model)
    return Pause(round(rng.uniform(0.05, 0.8), 2))


def _connect(rng: random.Random, model: _Model) -> Connect:
    client = rng.choice(CLIENTS)
    count = 1 if rng.random() < 0.55 else rng.choice((2, 2, 3))
    replicas = tuple(sorted(rng.sample(range(REPLICAS), count)))
    # several at once mostly without a token: with one, all but one are refused (4501)
    resume = client in model.seen and rng.random() < (0.6 if count == 1 else 0.25)
    model.seen.add(client)
    model.where[client] = replicas[-1]
    model.stalled.discard(client)
    return Connect(client, replicas, resume)


def _disconnect(rng: random.Random, model: _Model) -> Disconnect:
    connected = [c for c in CLIENTS if model.where[c] is not None] or list(CLIENTS)
    client = rng.choice(connected)
    model.where[client] = None
    model.stalled.discard(client)
    return Disconnect(client, abrupt=rng.random() < 0.5)


def _reader(rng: random.Random, model: _Model) -> Reader:
    if model.stalled and rng.random() < 0.6:
        client = rng.choice(sorted(model.stalled))
        model.stalled.discard(client)
        return Reader(client, stalled=False)
    client = rng.choice(CLIENTS)
    model.stalled.add(client)
    return Reader(client, stalled=True)


def _membership(rng: random.Random, model: _Model) -> Membership:
    connected = [c for c in CLIENTS if model.where[c] is not None]
    client = rng.choice(connected if connected and rng.random() < 0.85 else CLIENTS)
    home = model.where[client]
    local = home is not None and rng.random() < 0.5
    via = home if local and home is not None else rng.randrange(REPLICAS)
    return Membership(client, rng.choice(GROUPS), via, join=rng.random() < 0.7)


def _send(rng: random.Random, model: _Model) -> Send:
    via = rng.randrange(REPLICAS)
    kind = rng.random()
    if kind < 0.4:
        bulk = rng.choice((40, 80)) if model.stalled and rng.random() < 0.3 else 0
        return Send(via, None, bulk)
    if kind < 0.7:
        return Send(via, rng.choice(GROUPS))
    return Send(via, rng.choice(CLIENTS))


def _fault(rng: random.Random, model: _Model) -> Op:
    roll = rng.random()
    if roll < 0.6:
        kind, target = rng.choice(PROXY_FAULTS), rng.randrange(REPLICAS)
    elif roll < 0.8:
        kind, target = rng.choice(REDIS_FAULTS), -1
    else:
        kind, target = REPLICA_FAULTS[0], rng.randrange(REPLICAS)
    if any(key[1] == target or key[1] == -1 or target == -1 for key in model.faults):
        return _send(rng, model)  # one fault per target at a time
    if kind == "restart":
        return Fault(kind, target, heal=False)  # instant: Redis comes back empty at once
    model.faults[(kind, target)] = rng.randint(2, 8)
    if kind == "kill":
        for client, home in model.where.items():
            if home == target:
                model.where[client] = None
    latency = round(rng.uniform(0.02, 0.4), 3) if kind == "latency" else 0.0
    return Fault(kind, target, heal=False, latency=latency)


def describe(op: Op) -> str:
    """One line for a log of the run."""
    if isinstance(op, Together):
        return "together(" + "; ".join(describe(part) for part in op.ops) + ")"
    return repr(op)
