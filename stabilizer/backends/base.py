"""The Backend protocol: what a node needs from the state shared by all nodes.

The manager never talks to Redis; it talks to a Backend. Every method that may need the
network raises BackendUnavailable (quickly) when the shared store cannot be reached, so the
manager can degrade: keep local sockets, deliver locally, re-register later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


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

    async def keepalive(self, node_ttl: float) -> Liveness:
        """Refresh this node's liveness and reap nodes whose entry expired."""
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
