"""What a run observed: every socket with its frames, every message sent, every operation.

Plain records, filled by the runner and read by the checker; `to_json` writes them out for
a failing seed. Times are the runner's monotonic clock.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Position = tuple[int, str]  # (offset, epoch)
MessageKey = tuple[int, int]  # (message number, repeat index)


@dataclass(slots=True)
class Received:
    """One frame a socket received after its welcome."""

    at: float
    kind: str  # "message", "resume" or the frame's type
    key: MessageKey | None = None
    stream: str | None = None
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None
    failed: tuple[str, ...] = ()


@dataclass(slots=True)
class SocketRecord:
    """One WebSocket the checker opened."""

    sid: int
    client: str
    replica: int
    node_id: str
    started: float
    parent: int | None = None  # the socket whose token this one presented
    positions: dict[str, Position] = field(default_factory=dict)
    welcomed: float | None = None
    conn_id: str | None = None
    resumed: bool | None = None
    token: str | None = None
    frames: list[Received] = field(default_factory=list)
    closed: float | None = None
    close_code: int | None = None
    closed_by_client: str | None = None  # "clean" or "abrupt"
    refused: str | None = None  # the handshake failed before any frame

    @property
    def is_open(self) -> bool:
        """Welcomed and not closed (as the client sees it)."""
        return self.welcomed is not None and self.closed is None


@dataclass(slots=True)
class MessageRecord:
    """One message the checker asked a replica to send."""

    key: MessageKey
    target: str | None  # None: everyone; "g..." a group; "c..." a client
    via: int
    started: float
    ended: float | None = None
    status: int | None = None
    definite: bool = False  # the replica said it was handed on everywhere
    offset: int | None = None
    epoch: str | None = None
    marker: bool = False


@dataclass(slots=True)
class OpRecord:
    """One operation of the schedule as it ran."""

    index: int
    text: str
    started: float
    ended: float | None = None
    outcome: str = ""


@dataclass(slots=True)
class FaultRecord:
    """A fault the runner injected or healed (target -1: redis-server itself)."""

    at: float
    kind: str
    target: int
    heal: bool
    done: str


#: Faults under which a replica may admit a client without Redis (it cannot register it).
ADMISSION_FAULTS = frozenset({"latency", "stall", "cut", "pause", "restart"})


@dataclass
class History:
    """Everything observed in one run."""

    seed: int
    history: bool
    sockets: list[SocketRecord] = field(default_factory=list)
    messages: dict[MessageKey, MessageRecord] = field(default_factory=dict)
    ops: list[OpRecord] = field(default_factory=list)
    memberships: list[tuple[float, float, str, str, bool, int | None]] = field(
        default_factory=list)  # (started, ended, client, group, join, status)
    faults: list[FaultRecord] = field(default_factory=list)

    def degraded(self, record: SocketRecord, margin: float = 1.0) -> bool:
        """Whether `record`'s replica may have admitted it without Redis: a fault that
        cuts the replica off from Redis was on (or ended less than `margin` seconds ago)
        while it connected. Such a socket is served locally, with weaker guarantees."""
        until = record.welcomed if record.welcomed is not None else record.started
        began: dict[tuple[str, int], float] = {}
        for fault in self.faults:
            key = (fault.kind, fault.target)
            if fault.kind not in ADMISSION_FAULTS or fault.target not in (-1, record.replica):
                continue
            if not fault.heal:
                began[key] = fault.at
                if fault.kind == "restart" and record.started - margin <= fault.at <= until:
                    return True
            elif key in began and began.pop(key) <= until and fault.at >= (
                    record.started - margin):
                return True
        return any(start <= until for start in began.values())

    def open_sockets(self) -> list[SocketRecord]:
        """Sockets the client side still holds open."""
        return [record for record in self.sockets if record.is_open]

    def to_json(self, path: Path) -> None:
        """Write the whole history as JSON (for a failing seed)."""
        body: dict[str, Any] = {
            "seed": self.seed, "history": self.history,
            "sockets": [dataclasses.asdict(record) for record in self.sockets],
            "messages": [dataclasses.asdict(record) for record in self.messages.values()],
            "ops": [dataclasses.asdict(record) for record in self.ops],
            "memberships": self.memberships,
            "faults": [dataclasses.asdict(record) for record in self.faults],
        }
        path.write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")
