"""What a node needs from the state all nodes share, as small role protocols.

A ``Backend`` bundles one object per role: presence, users, routing, groups, history,
sessions, tokens, liveness and events. Services use the roles they need, never a concrete backend.
Every method that may need the network raises BackendUnavailable (quickly) when the shared
store cannot be reached, so the node can degrade: keep local sockets, deliver locally,
re-register later. tests/contract runs one suite over every implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from stabilizer.backends.records import (
    History,
    Liveness,
    MembershipChange,
    NodeReport,
    Presence,
    Registration,
    Resynced,
    Seat,
    Sequenced,
    SessionGone,
    SessionState,
    SessionTaken,
    UserLimit,
    UserRoute,
)
from stabilizer.backends.stream_roles import (
    UNLIST_ROUND_TRIPS,
    GroupStore,
    HistoryStore,
    SessionStore,
)
from stabilizer.pure.keyring import SharedKeys
from stabilizer.results import ClusterEvent
from stabilizer.stats import BackendStats

#: The orphan grace, in node_ttl: how long a store keeps a client it does not know (a
#: membership with no presence behind it) on the away list before the sweep ends it.
ORPHAN_GRACE_TTLS = 2.0

__all__ = [
    "UNLIST_ROUND_TRIPS", "Backend", "EventBus", "GroupStore", "History", "HistoryStore",
    "Liveness", "MembershipChange", "NodeRegistry", "NodeReport", "Presence", "PresenceStore",
    "Registration", "Resynced", "Routing", "Seat", "Sequenced", "SessionGone", "SessionState",
    "SessionStore", "SessionTaken", "SharedKeys",
    "TaskSpawner", "TokenStore", "UserLimit", "UserRoute", "UserStore",
]


class TaskSpawner(Protocol):
    """Who starts a backend's background tasks, and cancels them when the node stops."""

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]: ...


class PresenceStore(Protocol):
    """Who is connected where (and, for authenticated connections, for which user)."""

    async def register(self, presence: Presence, *, max_cluster: int | None,
                       end_groups: bool = False, seat: Seat | None = None,
                       baselines: bool = False, fresh: bool = False,
                       abandoned: Callable[[], None] | None = None) -> Registration:
        """Record `presence` in one round trip; tell a previous owner node (another one) to
        close its socket of the client with a KICK naming that socket's conn id (`fresh`:
        the connection does not resume the client's session, and the KICK says so: no
        replay will carry what that socket awaits to the client again). With
        `end_groups`, whatever group memberships the client has end too (a connection
        without history begins with none: a previous connection's, or one an earlier
        connection's node wrote after its client was swept), in the same step when the
        store can (``groups_ended`` says whether it did). A presence with a
        ``user_id`` also takes a `seat` among that user's connections, checked against the
        seat's limit in the same step. With `baselines` (a fresh session's), where the
        client's session streams (``session_streams``) stood no later than the moment the
        connection became routable (``positions``: read in the same step where the store
        can, else just before it, one round trip more): what is sent to the client after
        that is owed to its session. Bounded by the backend: it answers or raises
        BackendUnavailable within op_timeout per round trip (a call batched with others
        may first wait for the batch in flight), so admission sets no timer of its own.
        `abandoned` is called if the presence was recorded although the caller had given
        up (cancelled) while the store was still working on it: the caller removes it.

        Raises:
            UserConnectionLimitError: the user already holds `seat.max_connections`.
            ConnectionLimitExceededError: the cluster already holds `max_cluster` clients.
            BackendUnavailable: the store cannot be reached, or did not answer in time.
        """
        ...

    async def unregister(self, client_id: str, conn_id: str, *,
                         end_groups: bool = False, away: float = 0.0) -> bool:
        """Remove the client's presence (and its user's seat) only if it still names
        `conn_id`; with `end_groups`, the client's group memberships end in the same step
        when the store can (`ends_groups`), so that none written meanwhile outlives it;
        with `away` (seconds), the client goes on the away list for that long in the same
        step where the store can (one presence bucket), else in a step before, so that a
        node that dies before it suspends or ends the session (or, without history, ends
        the groups `end_groups` could not) leaves that to the sweep, not for good.
        True when the presence was removed. Bounded by the backend, as register() is.

        Raises:
            BackendUnavailable: the store did not answer in time (the removal may have run).
        """
        ...

    @property
    def ends_groups(self) -> bool:
        """True when unregister(end_groups=True) ends the memberships in the same step."""
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


class UserStore(Protocol):
    """The connections of each user, cluster-wide (kept by register and unregister, reaped
    with their nodes)."""

    async def connections(self, user_id: str) -> list[Presence]:
        """Return the presence (with ``info``) of every connection of `user_id`, oldest
        first (``since``, then client id)."""
        ...

    async def count(self) -> int:
        """Count users with at least one connection anywhere."""
        ...

    async def set_info(self, user_id: str, client_id: str, conn_id: str, info: str) -> bool:
        """Record `info` (compact JSON, "" for none) as the info of `client_id`'s seat among
        `user_id`'s connections if the seat still names `conn_id`; True if it did."""
        ...

    async def route(self, user_id: str, envelope: bytes) -> UserRoute:
        """Hand `envelope` to every other node holding a connection of `user_id`, in one
        round trip; return the client ids of the user's connections those nodes hold, and
        of every connection of the user seated on another node (see UserRoute)."""
        ...


class Routing(Protocol):
    """Envelopes between nodes: to all of them, or to the one that holds a client."""

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while deliveries() is subscribed and receiving; cleared when it is lost."""
        ...

    def deliveries(self) -> AsyncIterator[bytes]:
        """Yield raw envelopes addressed to this node until cancelled.

        Raises:
            BackendUnavailable: the subscription was lost; call again after a backoff.
        """
        ...

    async def publish(self, envelope: bytes) -> int:
        """Hand `envelope` to every other node; return how many nodes received it."""
        ...

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """Hand `envelope` to the node owning `client_id`; False when no node owns it."""
        ...

    async def to_node(self, node_id: str, envelope: bytes) -> bool:
        """Hand `envelope` to node `node_id`; False when it does not receive (gone, or its
        subscription is down)."""
        ...


class TokenStore(Protocol):
    """Single use of reconnect tokens, and the keys every node signs and verifies them with."""

    @property
    def known_secret(self) -> bytes | None:
        """A signing key usable before open() (the embedded backend's), else None."""
        ...

    async def consume(self, nonce: str, until: float) -> bool:
        """Mark a token nonce used until wall time `until` (the token's expiry plus
        max_clock_skew: a replica whose clock is behind still finds the mark while the token
        looks alive to that replica); False when it was already used (cluster-wide)."""
        ...

    async def restore(self, nonce: str) -> None:
        """Undo consume: the connection it was for could not be admitted."""
        ...

    async def share_keys(self, offer: bytes, held: Mapping[bytes, float]) -> SharedKeys:
        """Agree on the token keys, in one round trip: keep `offer` as the signing key when
        the store has none (it restarted empty, or this is the first node), add the keys of
        `held` (key -> time.time() it verifies until) to those that verify, drop the keys
        whose time is over, and return what the store holds now."""
        ...


class NodeRegistry(Protocol):
    """Node liveness: keepalives, reaping dead nodes, re-registering after an outage."""

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
        """Refresh this node's liveness and reap nodes whose entry expired; the sessions of
        reaped clients end after `session_ttl` unless they come back."""
        ...

    async def incarnation(self) -> str | None:
        """An opaque value that changes whenever the store may have lost writes it had
        acknowledged: it restarted, or a replica took over from it. None when the store does
        not tell (then any failure to reach it has to be taken as such a loss)."""
        ...

    async def resync(self, local: Sequence[Presence], *, claims: Collection[str] = (),
                     session_ttl: float = 0.0, listed_at: float | None = None,
                     user_limit: UserLimit | None = None) -> Resynced:
        """Re-register this node's clients after the store came back (or was wiped) and
        forget entries this node no longer holds.

        A client that another node holds keeps its entry there, unless it is in `claims`
        (its local connection was admitted while the store was unreachable, so it never
        overwrote anything) and its local connection is the newer one: then it is taken
        over and the other node gets a KICK for its older socket. Entries of this node's
        connections made at or after `listed_at` (admitted meanwhile) stay; forgotten ones
        end as reaped ones do (see forget_predecessor).

        With `user_limit`, no user holds more seats than that after the resync, whichever
        nodes resync when: the local connections are seated oldest first (``since``, then
        client id); one that finds its user full takes the seat of the user's newest
        connection if that is newer than itself (its node gets a CLIENT_CLOSE naming it,
        USER_LIMIT; this node's own come back in ``over_limit``), else it gets none and is
        not registered. A connection's seat already recorded stays without a check, and so
        does one in ``user_limit.seated`` (the store admitted it, then lost writes).

        Returns the client ids another node keeps (their local sockets are stale: the
        caller closes them as replaced) and this node's connections past their user's
        limit (the caller closes them with USER_LIMIT).
        """
        ...

    async def forget_predecessor(self, session_ttl: float = 0.0) -> int:
        """Before admitting anything, end what an earlier process under this node id left
        (no survivor reaps a node alive again), as reaping does: presence and seats now,
        sessions and groups after `session_ttl` unless the client returns; return a count."""
        ...

    async def unregister_node(self) -> None:
        """Remove this node and all of its presence (clean shutdown)."""
        ...

    async def nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        ...

    async def report(self, report: NodeReport) -> None:
        """Keep this node's latest report (written with each keepalive, never per message;
        it goes when the node unregisters or is reaped)."""
        ...

    async def reports(self) -> list[NodeReport]:
        """Return the latest report of every node that wrote one and was not reaped or
        unregistered since (a node that died may still be listed until it is reaped)."""
        ...


class EventBus(Protocol):
    """Cluster events (``cluster_events``): connects, disconnects, joins and leaves."""

    async def publish(self, event: ClusterEvent) -> None:
        """Tell every other node about a connect or disconnect of this node's client.
        (Joins and leaves are published by the group and session stores themselves.)"""
        ...


class Backend(Protocol):
    """The state shared by all nodes: one object per role, opened once per node."""

    @property
    def presence(self) -> PresenceStore:
        """Role: who is connected where."""
        ...

    @property
    def users(self) -> UserStore:
        """Role: the connections of each user."""
        ...

    @property
    def routing(self) -> Routing:
        """Role: envelopes between nodes."""
        ...

    @property
    def groups(self) -> GroupStore:
        """Role: group membership and channels."""
        ...

    @property
    def history(self) -> HistoryStore:
        """Role: sequenced streams."""
        ...

    @property
    def sessions(self) -> SessionStore:
        """Role: resumable sessions."""
        ...

    @property
    def tokens(self) -> TokenStore:
        """Role: single-use tokens and the shared key."""
        ...

    @property
    def liveness(self) -> NodeRegistry:
        """Role: node liveness and reaping."""
        ...

    @property
    def events(self) -> EventBus:
        """Role: cluster events."""
        ...


    @property
    def name(self) -> str:
        """A short name for logs and /health: ``memory``, ``redis`` or ``redis-cluster``."""
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
    def stats(self) -> BackendStats:
        """What each operation cost and how often it failed."""
        ...

    async def open(self, node_id: str, tasks: TaskSpawner, *, events: bool = False,
                   sessions: bool = False, receives: bool = True) -> None:
        """Connect for `node_id`; `tasks` owns any background task the backend needs;
        with `events`, membership changes are published as cluster events; with `sessions`
        (history on), a membership change names its client's session holder, else the
        connection presence names. Without `receives` (an emitter) nothing is ever
        delivered to `node_id`.

        Raises:
            BackendUnavailable: the store cannot be reached now (the node still starts).
        """
        ...

    async def aclose(self) -> None:
        """Release connections and subscriptions; idempotent. From then on every call
        raises BackendNotReached: a closed backend reaches nothing (nor connects again)."""
        ...
