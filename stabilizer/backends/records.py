"""The records the backend roles exchange with a node: presence entries, registrations,
sequenced positions, a stream's history, a session's state, a liveness round, a user's seat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
    and whether that connection's group memberships were ended in the same step."""

    previous: Presence | None
    groups_ended: bool = False


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A message appended to its stream: its position and how many nodes it reached."""

    offset: int
    epoch: str
    receivers: int


@dataclass(frozen=True, slots=True)
class History:
    """The envelopes of a stream after a position, or why they cannot be had.

    ``covered`` is False when the stream lost part of the range (trimmed, expired, or a new
    epoch): the client must resync.
    """

    envelopes: list[bytes]
    covered: bool


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


@dataclass(frozen=True, slots=True)
class Liveness:
    """The outcome of a keepalive: nodes reaped now, and whether this node had vanished
    from the registry (Redis restarted empty, or this node was reaped after a long pause),
    in which case its presence must be re-registered."""

    reaped: tuple[str, ...] = ()
    rejoined: bool = False


@dataclass(frozen=True, slots=True)
class Seat:
    """A connection's place among its user's connections: the user's public info (compact
    JSON, "" for none) and the user's connection limit (None: no limit)."""

    info: str = ""
    max_connections: int | None = None
