"""WebSocketConnectionManager: the facade. It wires a node's services and delegates to them.

Every concern lives below it, in a room of its own (see docs/architecture.md): admission,
closing, liveness, memory, tokens, delivery, resume, maintenance and lifecycle. This class
holds no logic of theirs; each method is one call into the service that owns the concern.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

from stabilizer.backends.base import Backend, Presence
from stabilizer.backends.factory import backend_for
from stabilizer.config import CloseCode, WebSocketConfig
from stabilizer.connection.connection import Connection
from stabilizer.connection.pool import Pool
from stabilizer.connection.sockets import SocketLike
from stabilizer.errors import BroadcastFailedError, ConnectionNotFoundError
from stabilizer.node.context import NodeContext, Phase
from stabilizer.pure.streams import Target
from stabilizer.pure.text import (
    Message,
    check_client_id,
    check_group,
    encode_message,
    is_text,
    json_value,
)
from stabilizer.results import BroadcastResult, ShutdownReport
from stabilizer.services.admission import Admission
from stabilizer.services.closing import Closing
from stabilizer.services.delivery.fanout import FanOut
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.listener import Listener
from stabilizer.services.delivery.live import LiveRouter
from stabilizer.services.delivery.router import Router
from stabilizer.services.delivery.sequenced import SequencedRouter
from stabilizer.services.events import ClusterListener, Events, Hook
from stabilizer.services.lifecycle import Lifecycle, Loop
from stabilizer.services.liveness import Liveness
from stabilizer.services.maintenance import Maintenance
from stabilizer.services.memory import MemoryGuard
from stabilizer.services.resume import Resume
from stabilizer.services.tokens import TokenService
from stabilizer.session import Session, SessionServices
from stabilizer.stats import NodeStats


class WebSocketConnectionManager:
    """Tracks this node's WebSocket connections and reaches clients on every node.

    Drop-in for fastapi-websocket-stabilizer's manager: same methods, same defaults.
    """

    def __init__(self, config: WebSocketConfig | None = None, *, backend: Backend | None = None,
                 redis: Any = None) -> None:
        config = config if config is not None else WebSocketConfig()
        config.apply_log_level()
        ctx = self._ctx = NodeContext(config, backend or backend_for(config, redis))
        self._events = Events(ctx)
        self._liveness = Liveness(ctx, on_timeout=lambda conn: self._closing.on_timeout(conn))
        self._membership = Membership(ctx, self._events,
                                      on_unfollow=lambda stream: self._router.unfollow(stream))
        fanout = FanOut(ctx, self._membership)
        self._router: Router = (SequencedRouter(ctx, fanout, self._membership)
                                if config.history_enabled else LiveRouter(ctx, fanout))
        self._closing = Closing(ctx, self._liveness, self._membership, self._events)
        self._memory = MemoryGuard(ctx, self._closing)
        self._tokens = TokenService(ctx)
        self._admission = Admission(ctx, self._closing, self._liveness, self._memory,
                                    self._events, ensure_started=self.start)
        listener = Listener(ctx, self._router, self._membership, self._events,
                            on_kick=self._admission.kick)
        maintenance = Maintenance(ctx, self._memory, self._tokens,
                                  connections=self._admission.connections,
                                  kick=self._admission.kick)
        loops: dict[str, Loop] = {"heartbeat": self._liveness.run,
                                  "maintenance": maintenance.run}
        if ctx.follows_others:
            loops["listener"] = listener.run
        self._lifecycle = Lifecycle(ctx, self._closing, self._tokens, loops)
        self._sessions = SessionServices(
            ctx, self._admission, self._closing, self._liveness, self._tokens,
            Resume(ctx, self._membership) if config.history_enabled else None)

    @property
    def config(self) -> WebSocketConfig:
        """This node's configuration (frozen)."""
        return self._ctx.config

    @property
    def node_id(self) -> str:
        """This node's id (config.node_id, or host-pid-random)."""
        return self._ctx.node_id

    @property
    def backend(self) -> Backend:
        """The backend this manager talks to."""
        return self._ctx.backend

    @property
    def pool(self) -> Pool:
        """This node's connections."""
        return self._ctx.pool

    @property
    def stats(self) -> NodeStats:
        """This node's counters."""
        return self._ctx.stats

    @property
    def phase(self) -> Phase:
        """new, running, draining (shutting down) or stopped."""
        return self._ctx.phase

    @property
    def shutdown_close_code(self) -> CloseCode:
        """The code sockets get when this node shuts down (or refuses them while it does)."""
        return self._ctx.shutdown_code

    @property
    def is_accepting(self) -> bool:
        """True while new connections are admitted."""
        return self._ctx.is_accepting

    async def start(self) -> None:
        """Start the heartbeat, maintenance and (with other nodes or history) listener loops;
        idempotent, and connect() calls it if the application did not.

        Raises:
            ShutdownError: the manager was already shut down.
        """
        await self._lifecycle.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.graceful_shutdown()

    async def graceful_shutdown(self, timeout: float = 30.0, *,
                                restart: bool | None = None) -> ShutdownReport:
        """Stop admitting, drain outboxes until the deadline, close every socket (1001, or
        1012 when restarting), stop the loops, drop presence; a second call does nothing.

        Raises:
            ShutdownError: a loop or the backend failed to stop (after everything else).
        """
        return await self._lifecycle.shutdown(timeout, restart)

    def open_session(self, websocket: Any, client_id: str, *,
                     metadata: dict[str, Any] | None = None, token: str | None = None,
                     positions: str | None = None, welcome: bool = True) -> Session:
        """Return a Session that serves one socket from admission to release."""
        return Session(self._sessions, websocket, client_id, metadata=metadata, token=token,
                       positions=positions, welcome=welcome)

    async def connect(self, client_id: str, websocket: SocketLike,
                      metadata: dict[str, Any] | None = None) -> None:
        """Register an (accepted, or accepted here) WebSocket for `client_id`; an earlier
        socket of the client, on any node, is closed with REPLACED (4500).

        Raises:
            InvalidClientIdError: the id is empty, too long or not text.
            ConnectionLimitExceededError: max_connections or max_cluster_connections reached.
            MemoryLimitExceededError: the metadata or the node would exceed a memory limit.
            ShutdownError: the node is shutting down.
        """
        await self._admission.admit(client_id, websocket, metadata)

    async def disconnect(self, client_id: str, *, code: int = CloseCode.NORMAL,
                         reason: str = "normal closure") -> None:
        """Close and remove the client's connection on this node; from a handler whose socket
        the node already closed (replaced, timed out, evicted) it does nothing. With history,
        a normal closure ends the session; any other code leaves it resumable.

        Raises:
            ConnectionNotFoundError: no connection of `client_id` exists on this node.
        """
        if not is_text(client_id):
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        await self._closing.disconnect(client_id, code, reason)

    def get_connection(self, client_id: str) -> Connection | None:
        """Return the local Connection of `client_id`, or None."""
        return self._ctx.pool.get(client_id) if is_text(client_id) else None

    def is_connected(self, client_id: str) -> bool:
        """True if `client_id` is connected to this node."""
        return self.get_connection(client_id) is not None

    def get_active_connections(self) -> list[str]:
        """Return the client ids connected to this node (see get_cluster_connections)."""
        return self._ctx.pool.client_ids()

    def get_connection_count(self) -> int:
        """Return how many clients are connected to this node."""
        return len(self._ctx.pool)

    async def send_to_client(self, client_id: str, message: Message) -> bool:
        """Send to one client on any node; True if a node took the frame (with history: or
        it is kept for the client's resumable session). False for an unknown, invalid or
        unreachable client.

        Raises:
            TypeError: the message is not text, bytes or JSON-serializable.
        """
        payload = encode_message(message)
        if not is_text(client_id) or not client_id:
            return False
        return await self._router.send(client_id, payload, json_value(message))

    async def broadcast(self, message: Message,
                        exclude_client: str | None = None) -> BroadcastResult:
        """Send to every client on every node except `exclude_client`; serialize once.

        Raises:
            BroadcastFailedError: there were recipients and the message reached none of them.
        """
        result = await self._router.publish(Target("all"), encode_message(message),
                                            exclude_client, json_value(message))
        self._ctx.stats.broadcasts += 1
        if result.total > 0 and result.succeeded == 0 and result.remote_nodes == 0:
            raise BroadcastFailedError(
                f"broadcast failed for all {result.total} local clients", result)
        return result

    async def send_to_group(self, group: str, message: Message,
                            exclude_client: str | None = None) -> BroadcastResult:
        """Send to every member of `group` on every node; the result counts local members.

        Raises:
            ValueError: the group name is not usable.
        """
        payload = encode_message(message)
        return await self._router.publish(Target("group", check_group(group)), payload,
                                          exclude_client, json_value(message))

    async def join_group(self, client_id: str, group: str) -> None:
        """Add a client connected to any node to `group` (cluster-wide).

        Raises:
            ValueError: the group name is empty, too long or not text.
            ConnectionNotFoundError: the client is not connected anywhere.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self.config.max_client_id_length)
        await self._membership.join(client_id, group)

    async def leave_group(self, client_id: str, group: str) -> None:
        """Remove a client from `group` (no error if it was not a member).

        Raises:
            ValueError: the group name is not usable.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self.config.max_client_id_length)
        await self._membership.leave(client_id, group)

    async def get_group_members(self, group: str) -> list[str]:
        """Return the members of `group` on every node (a resumable session's client stays
        a member).

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.groups.members(check_group(group)))

    async def get_client_groups(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to (cluster-wide).

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.groups.of_client(client_id))

    async def handle_pong(self, client_id: str) -> None:
        """Record a pong from `client_id` (unknown ids are ignored)."""
        if is_text(client_id):
            self._liveness.pong(client_id)

    async def ping(self, client_id: str, timeout: float | None = None) -> float:
        """Ping a local client now and return the round-trip time in seconds.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            ConnectionTimeoutError: no answer within `timeout` (default heartbeat_timeout).
        """
        conn = self.get_connection(client_id)
        if conn is None or not conn.is_open:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        return await self._liveness.ping(conn, timeout)

    async def get_cluster_connection_count(self) -> int:
        """Count clients connected to any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.presence.count())

    async def get_cluster_connections(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield the presence of every client on every node, a batch per round trip.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        async for presence in self._ctx.backend.presence.scan(batch):
            yield presence

    async def locate_client(self, client_id: str) -> str | None:
        """Return the id of the node holding `client_id`, or None.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not is_text(client_id) or not client_id:
            return None
        presence = await self._ctx.ask(self._ctx.backend.presence.locate(client_id))
        return None if presence is None else presence.node_id

    async def get_nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        return await self._ctx.ask(self._ctx.backend.liveness.nodes())

    def generate_reconnect_token(self, client_id: str) -> str:
        """Return a signed single-use token that any node validates within its TTL.

        Raises:
            InvalidClientIdError: the id is not usable.
            WebSocketStabilizerError: tokens are disabled, or no key is known yet (call
                start() first when the key comes from Redis).
        """
        return self._tokens.issue(client_id)

    async def validate_reconnect_token(self, token: str) -> str:
        """Check a token, spend it (single use, cluster-wide) and return its client id.

        Raises:
            InvalidTokenError: malformed, forged, foreign, already used, or tokens disabled.
            TokenExpiredError: authentic but expired.
            BackendUnavailable: single use cannot be checked because Redis is unreachable.
        """
        return (await self._tokens.consume(token)).client_id

    def total_memory(self) -> int:
        """Approximate bytes held by all local connections."""
        return self._memory.total()

    def get_memory_usage(self) -> dict[str, int | float]:
        """Return {total_memory, connection_count, per_connection_average, queued_bytes}."""
        return self._memory.usage()

    def check_memory(self) -> int:
        """Enforce max_total_memory now (also run every memory_check_interval); return the
        bytes freed."""
        return self._memory.check()

    async def set_user_data(self, client_id: str, key: str, value: Any) -> None:
        """Attach `value` under `key` to the client's connection on this node.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            MemoryLimitExceededError: the value would take the connection over its limit.
        """
        await self._memory.set_user_data(client_id, key, value)

    async def get_user_data(self, client_id: str, key: str) -> Any | None:
        """Return the value stored under `key` for the client, or None."""
        return self._memory.get_user_data(client_id, key)

    def on_connect(self, hook: Hook) -> Hook:
        """Register a callback (sync or async) run once per local connect; usable as a
        decorator. It receives a ConnectionEvent."""
        return self._events.on_connect(hook)

    def on_disconnect(self, hook: Hook) -> Hook:
        """Register a callback run once per local disconnect (code and reason included)."""
        return self._events.on_disconnect(hook)

    def on_cluster_event(self, listener: ClusterListener) -> ClusterListener:
        """Register a callback for cluster-wide connect/disconnect/join/leave events.

        Raises:
            ConfigError: cluster_events is not enabled in the config.
        """
        return self._events.on_cluster_event(listener)


__all__ = ["Phase", "WebSocketConnectionManager"]
