"""The Backend protocol: what a node needs from the state shared by all nodes.

The manager never talks to Redis; it talks to a Backend. Every method that may need the
network raises BackendUnavailable (quickly) when the shared store cannot be reached, so the
manager can degrade: keep local sockets, deliver locally, re-register later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stabilizer.wire import Envelope


@dataclass(frozen=True, slots=True)
class Presence:
    """Where one client is connected: which node, which socket, since when (wall seconds)."""

    client_id: str
    node_id: str
    conn_id: str
    since: float


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of registering a connection: who held the client id before, if anyone."""

    previous: Presence | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a sequenced message goes: everyone, a group, or one client."""

    kind: Literal["all", "group", "client"]
    name: str = ""

    @property
    def stream(self) -> str:
        """The history stream name: ``all``, ``g:<group>`` or ``c:<client_id>``."""
        if self.kind == "all":
            return "all"
        return f"{'g' if self.kind == 'group' else 'c'}:{self.name}"


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


@runtime_checkable
class Backend(Protocol):
    """Presence, routing, pub/sub, single-use tokens and node liveness, shared by all nodes."""

    @property
    def name(self) -> str:
        """A short name for logs and /health: ``memory`` or ``redis``."""
        ...

    @property
    def is_shared(self) -> bool:
        """True when other nodes may be reached through this backend."""
        ...

    @property
    def available(self) -> bool:
        """False while the shared store is known to be unreachable."""
        ...

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while deliveries() is subscribed and receiving; cleared when it is lost."""
        ...

    async def open(self, node_id: str) -> None:
        """Connect and subscribe for `node_id`; retry happens in deliveries().

        Raises:
            BackendUnavailable: the store cannot be reached now (the node still starts).
        """
        ...

    async def aclose(self) -> None:
        """Release connections and subscriptions; idempotent."""
        ...

    def deliveries(self) -> AsyncIterator[bytes]:
        """Yield raw envelopes addressed to this node until cancelled.

        Raises:
            BackendUnavailable: the subscription was lost; call again after a backoff.
        """
        ...

    async def register(self, presence: Presence, *, max_cluster: int | None) -> Registration:
        """Record `presence` in one round trip; tell a previous owner node to close its socket.

        Raises:
            ConnectionLimitExceededError: the cluster already holds `max_cluster` clients.
            BackendUnavailable: the store cannot be reached.
        """
        ...

    async def unregister(self, client_id: str, conn_id: str) -> bool:
        """Remove the client's presence only if it still names `conn_id`."""
        ...

    async def publish(self, envelope: bytes) -> int:
        """Hand `envelope` to every other node; return how many nodes received it."""
        ...

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """Hand `envelope` to the node owning `client_id`; False when no node owns it."""
        ...

    async def consume_token(self, nonce: str, expires_at: float) -> bool:
        """Mark a token nonce used; False when it was already used (cluster-wide)."""
        ...

    async def restore_token(self, nonce: str) -> None:
        """Undo consume_token: the connection it was for could not be admitted."""
        ...

    async def shared_secret(self) -> bytes:
        """Return the token key all nodes agree on, creating it once if needed."""
        ...

    async def count(self) -> int:
        """Count clients connected anywhere."""
        ...

    def scan(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield every client's presence, a batch per round trip."""
        ...

    async def locate(self, client_id: str) -> Presence | None:
        """Return where `client_id` is connected, or None."""
        ...

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
        """Refresh this node's liveness and reap nodes whose entry expired; the sessions of
        reaped clients end after `session_ttl` unless they come back."""
        ...

    async def resync(self, local: Sequence[Presence]) -> list[str]:
        """Re-register this node's clients after the store came back (or was wiped).

        Returns the client ids that meanwhile connected to another node: their local
        sockets are stale and the caller closes them as replaced.
        """
        ...

    async def unregister_node(self) -> None:
        """Remove this node and all of its presence (clean shutdown)."""
        ...

    async def nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        ...

    # --- groups -------------------------------------------------------------------

    async def publish_group(self, group: str, envelope: bytes) -> int:
        """Hand `envelope` to the nodes with local members of `group`; return how many."""
        ...

    async def join_group(self, client_id: str, group: str) -> bool:
        """Add a member cluster-wide (recording the group stream's baseline in the client's
        session, if it has one); False if it already was a member."""
        ...

    async def leave_group(self, client_id: str, group: str) -> bool:
        """Remove a member cluster-wide; False if it was not one."""
        ...

    async def group_members(self, group: str) -> list[str]:
        """Return the members of `group` on every node."""
        ...

    async def client_groups(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to."""
        ...

    async def subscribe_group(self, group: str) -> None:
        """Start receiving `group`'s messages on this node (first local member joined)."""
        ...

    async def unsubscribe_group(self, group: str) -> None:
        """Stop receiving `group`'s messages on this node (last local member left)."""
        ...

    # --- history ------------------------------------------------------------------

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float, meta_ttl: float
    ) -> Sequenced:
        """Assign the next offset of `target`'s stream, append and publish, in one step.

        The stream keeps `size` entries for `ttl` seconds after its last message; its offset
        and epoch live `meta_ttl` seconds (at least the session TTL, so that a missing stream
        means "nothing was published since").

        For a client target the message is kept only if the client is connected or its
        session is resumable (receivers 0 and offset 0 otherwise).
        """
        ...

    async def history(self, stream: str, after: int, epoch: str) -> History:
        """Return the envelopes of `stream` with offsets after `after` in `epoch` (an empty
        epoch with `after` 0 asks for everything the stream still holds)."""
        ...

    # --- sessions -----------------------------------------------------------------

    async def load_session(self, client_id: str) -> SessionState | None:
        """Return the resumable session of `client_id`, or None."""
        ...

    async def open_session(self, client_id: str, *, fresh: bool) -> None:
        """Mark the session live (no expiry while connected); a fresh one records the
        baselines of the client's ``all`` and ``c:<client_id>`` streams."""
        ...

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """Store one user-data value in the session."""
        ...

    async def suspend_session(self, client_id: str, ttl: float) -> None:
        """The client left: keep its session `ttl` seconds, then end it."""
        ...

    async def end_session(self, client_id: str) -> list[str]:
        """Drop the session and every group membership now; return the groups left."""
        ...

    async def sweep_sessions(self, limit: int = 100) -> list[str]:
        """End sessions whose time ran out; return their client ids."""
        ...
