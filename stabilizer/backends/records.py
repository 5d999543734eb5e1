"""The records the backend roles exchange with a node: presence entries, registrations,
membership changes, sequenced positions, a stream's history, a session's state, a liveness
round, a user's seat, a node's report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stabilizer.pure.json_input import loads
from stabilizer.pure.streams import Target


@dataclass(frozen=True, slots=True)
class Presence:
    """Where one client is connected: which node, which socket, since when (wall seconds),
    and the user it belongs to, if it authenticated.

    ``info`` is the user's public info (the identity's); only get_user_connections fills it.
    """

    client_id: str
    node_id: str
    conn_id: str
    since: float
    user_id: str | None = None
    info: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of registering a connection: who held the client id before, if anyone,
    whether the client's group memberships were ended in the same step, and where the
    streams asked about stood when the connection became routable (stream -> (offset,
    epoch); None when none were asked about)."""

    previous: Presence | None
    groups_ended: bool = False
    positions: dict[str, tuple[int, str]] | None = None


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """The outcome of a join or leave: whether it changed anything, and the connection that
    held the client's memberships when the store wrote it (``holder``, a conn id: with
    sessions, the connection that opened or resumed the client's session; without, the one
    presence names; ``""`` when none did; None when the store cannot tell in the same step).

    A node that holds another connection of the client must not carry the change out as
    it was written: an earlier session's end, or a newer connection's start, may have
    undone it since.
    """

    changed: bool
    holder: str | None = None


class SessionTaken(Exception):
    """A connection asked to open or take over its client's session after another
    connection of the client took presence (a newer socket, on any node): nothing changed,
    and the asking one is replaced (its kick may be on its way, or lost)."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"client {client_id!r} is held by another connection")
        self.client_id = client_id


class SessionGone(Exception):
    """A resume asked to take over a session that ended after it was loaded (its time ran
    out, and a sweep ended it between the two steps): nothing changed, and the resume
    begins a fresh session instead."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"the session of client {client_id!r} ended before its resume")
        self.client_id = client_id


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A message appended to its stream: its position and how many nodes it reached (for
    a user target: how many of the user's connections, and `clients`, their client ids)."""

    offset: int
    epoch: str
    receivers: int
    clients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserRoute:
    """What handing an envelope to a user's other nodes did: the client ids of the user's
    connections held by the nodes that received it (`reached`), and those of every
    connection of the user whose seat names another node than the sender's, received or
    not (`elsewhere`): the sender's own socket of one of those has been replaced there."""

    reached: list[str]
    elsewhere: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class History:
    """The envelopes of a stream after a position, or why they cannot be had.

    ``covered`` is False when the stream lost part of the range (trimmed, expired, or a new
    epoch): the client must resync. ``epoch`` is then the stream's epoch when it is not the
    one asked for (the old one ended: what it held is gone), else None.

    ``absent`` is True when the store holds no offset or epoch for the stream at all. That
    reads as covered (nothing was published since: the stream expired, which takes longer
    than a session lasts) unless the reader knows the stream existed too recently to have
    expired: then the store lost it.

    ``last`` is the stream's last offset when it was read (0 unless covered and present):
    a read bounded to a page stopped short of it when its envelopes end before it.
    """

    envelopes: list[bytes]
    covered: bool
    epoch: str | None = None
    absent: bool = False
    last: int = 0


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a resumable session keeps while its client is away.

    ``baselines`` are the positions of the client's streams when the session started (or
    when it joined a group): a resuming client that holds no position for one of its streams
    is replayed from there.
    """

    groups: list[str] = field(default_factory=list)
    user_data: dict[str, bytes] = field(default_factory=dict)
    baselines: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def user_id(self) -> str | None:
        """The user the session was opened for; None for an anonymous client, and for a
        session whose user is not known (`user_known` tells the two apart).

        A fresh session records a baseline for its user's stream and for no other user's
        (every backend, every version that knew users), so the baselines name its user:
        a session written before this was read needs no field of its own.
        """
        for stream in self.baselines:
            target = Target.of_stream(stream)
            if target is not None and target.kind == "user":
                return target.name
        return None

    @property
    def user_known(self) -> bool:
        """Whether the baselines tell the session's user: every open records ``all`` and
        the client's own stream with its user's. A session without them was never opened
        (a Redis node of an earlier version saved the user data of a client whose open
        had failed into a hash of its own): no user's baseline there says nothing."""
        kinds = {target.kind for stream in self.baselines
                 if (target := Target.of_stream(stream)) is not None}
        return {"all", "client"} <= kinds

    def is_for(self, user_id: str | None) -> bool:
        """Whether a connection of `user_id` (None: anonymous) may resume the session: it
        was opened for that user, or its user is not known."""
        return not self.user_known or self.user_id == user_id


@dataclass(frozen=True, slots=True)
class Liveness:
    """The outcome of a keepalive: nodes reaped now, and whether this node had vanished
    from the registry (Redis restarted empty, or this node was reaped after a long pause),
    in which case its presence must be re-registered."""

    reaped: tuple[str, ...] = ()
    rejoined: bool = False


@dataclass(frozen=True, slots=True)
class UserLimit:
    """max_connections_per_user as a resync keeps it: each user's oldest connections (by
    ``since``, then client id) keep their seats; a newer one past the limit closes with
    USER_LIMIT, on another node with `reason` (its retry advice). The connections in
    `seated` (conn ids) were admitted by a store that has since lost writes: they take a
    seat again without the check, since a seat the older data restored may name a
    connection that is long gone, and only its node can tell."""

    max_connections: int
    reason: str = ""
    seated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Resynced:
    """The outcome of a resync: the client ids another node keeps (this node's sockets of
    them are stale: closed as replaced), and this node's connections, as (client id, conn
    id), past their user's limit (closed with USER_LIMIT)."""

    lost: tuple[str, ...] = ()
    over_limit: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Seat:
    """A connection's place among its user's connections: the user's public info (compact
    JSON, "" for none) and the user's connection limit (None: no limit)."""

    info: str = ""
    max_connections: int | None = None


#: The NodeReport fields that are counts (non-negative integers).
_REPORT_COUNTS = ("connections", "messages_in", "messages_out", "broadcasts",
                  "outbox_frames", "outbox_max_frames")
#: How deep a stored report nests (an object of counts per group, one level down).
_REPORT_DEPTH = 2


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What a node tells the others about itself with each keepalive (every node_ttl / 3):
    its phase, its counters (monotonic since it started), its outbox pressure, the mean
    latency of its backend operations over the last interval (None: none ran) and the
    connected members of its largest local groups.

    ``at`` is the node's wall clock (seconds) when it wrote the report.
    """

    node_id: str
    phase: str
    at: float
    connections: int = 0
    messages_in: int = 0
    messages_out: int = 0
    broadcasts: int = 0
    outbox_frames: int = 0
    outbox_max_frames: int = 0
    backend_latency_ms: float | None = None
    groups: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as compact JSON (what the store keeps)."""
        body = {"node_id": self.node_id, "phase": self.phase, "at": self.at,
                "backend_latency_ms": self.backend_latency_ms, "groups": dict(self.groups)}
        body.update((name, getattr(self, name)) for name in _REPORT_COUNTS)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeReport | None:
        """Parse what to_json wrote; None for anything else (a report is advisory)."""
        try:
            body = loads(raw, _REPORT_DEPTH)
            counts = {name: body[name] for name in _REPORT_COUNTS}
            node_id, phase, at = body["node_id"], body["phase"], body["at"]
            latency, groups = body["backend_latency_ms"], body["groups"]
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(node_id, str) and isinstance(phase, str)
                and _is_number(at) and (latency is None or _is_number(latency))
                and all(_is_count(value) for value in counts.values())
                and isinstance(groups, dict)
                and all(isinstance(k, str) and _is_count(v) for k, v in groups.items())):
            return None
        return cls(node_id, phase, float(at), **counts,
                   backend_latency_ms=None if latency is None else float(latency),
                   groups=groups)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
