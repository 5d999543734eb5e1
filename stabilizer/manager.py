"""WebSocketConnectionManager: the facade. It wires a node's services and delegates to them.

Every concern lives below it, in a room of its own (see docs/architecture.md): admission,
closing, liveness, memory, tokens, delivery, resume, maintenance and lifecycle. This class
holds no logic of theirs; each method is one call into the service that owns the concern.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from stabilizer.auth.identity import Authenticator, AuthFunction, Identity, as_authenticator
from stabilizer.backends.base import Backend
from stabilizer.backends.factory import backend_after, backend_for
from stabilizer.channels import PublishHook, SubscribeHook
from stabilizer.config import CloseCode, WebSocketConfig
from stabilizer.connection.connection import Connection
from stabilizer.connection.pool import Pool
from stabilizer.connection.sockets import SocketLike
from stabilizer.errors import (
    BroadcastFailedError,
    ConnectionNotFoundError,
    WebSocketStabilizerError,
)
from stabilizer.facets.cluster import ClusterFacet
from stabilizer.facets.groups import GroupsFacet
from stabilizer.facets.presence import PresenceFacet
from stabilizer.facets.users import UsersFacet
from stabilizer.node.context import Phase
from stabilizer.pure.streams import Target
from stabilizer.pure.text import Message, encode_message, json_value
from stabilizer.pure.waits import wait_seconds
from stabilizer.results import BroadcastResult, ShutdownReport
from stabilizer.rpc import RPCHandler
from stabilizer.services.events import ClusterListener, Hook
from stabilizer.session import Session
from stabilizer.stats import NodeStats
from stabilizer.wiring import Node, assemble, reassemble

H = TypeVar("H", bound=RPCHandler)
logger = logging.getLogger(__name__)


class WebSocketConnectionManager(GroupsFacet, PresenceFacet, ClusterFacet, UsersFacet):
    """Tracks this node's WebSocket connections and reaches clients on every node.

    Drop-in for fastapi-websocket-stabilizer's manager: same methods, same defaults.
    With an `authenticator` (an Authenticator, or a function returning an Identity or
    None) every session is authenticated, and its user reachable with send_to_user.
    """

    def __init__(self, config: WebSocketConfig | None = None, *, backend: Backend | None = None,
                 redis: Any = None,
                 authenticator: Authenticator | AuthFunction | None = None) -> None:
        config = config if config is not None else WebSocketConfig()
        config.apply_log_level()
        self._authenticator = as_authenticator(authenticator)
        self._redis = redis
        self._made_backend = backend is None  # then it can be made again for a new loop
        self._current = assemble(config, backend or backend_for(config, redis),
                                 authenticator=self._authenticator, ensure_started=self.start)

    @property
    def _node(self) -> Node:
        """The node serving the running event loop: the one started in an event loop that
        has closed (a module-level manager, then a pytest loop per test, two TestClients,
        uvicorn run twice) is replaced by a new one, which the next start() or connect()
        starts in this loop."""
        node = self._current
        return self._follow(node) if node.ctx.loop_closed() else node

    def _follow(self, node: Node, why: str = "ran in an event loop that has ended") -> Node:
        """A new node in place of `node`, which `why`: over a backend made again (the
        in-process one on the same hub), with its id, counters, hooks and procedures."""
        if not self._made_backend:
            raise WebSocketStabilizerError(
                f"this manager's node {why}, and its backend (given as backend=) cannot be "
                "made again: create a new manager (in the loop that uses it), or give "
                "redis_url / redis= instead of backend=")
        backend = backend_after(node.ctx.backend, node.ctx.config, self._redis)
        self._current = reassemble(node, backend, authenticator=self._authenticator,
                                   ensure_started=self.start)
        logger.info("stabilizer node %s %s; starting again", node.ctx.node_id, why)
        return self._current

    @property
    def config(self) -> WebSocketConfig:
        """This node's configuration (frozen)."""
        return self._node.ctx.config

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
        idempotent, and connect() calls it if the application did not. Once the event loop
        it started in has closed, it starts the node again in the running one.

        A manager that was shut down starts again too (a new run of the same node: its id,
        counters, hooks and procedures; FastAPI's TestClient runs the lifespan once per
        `with`). Until then, connect() refuses with ShutdownError.

        Raises:
            ShutdownError: the manager is still shutting down.
            WebSocketStabilizerError: its loop is still open (running in another thread, or
                idle), or it was given a backend, which cannot be made again for a new loop
                or a new run.
        """
        node = self._node
        if node.ctx.phase is Phase.STOPPED:
            node = self._follow(node, "was shut down")
        await node.lifecycle.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.graceful_shutdown()

    async def graceful_shutdown(self, timeout: float = 30.0, *,
                                restart: bool | None = None) -> ShutdownReport:
        """Stop admitting, drain outboxes until the deadline, close every socket (1001, or
        1012 when restarting), stop the loops, drop presence. A call while one runs waits for
        it and returns its report (or raises its error); a call after it does nothing, as
        does one after the node's event loop closed (its sockets ended with it). A caller
        cancelled meanwhile (asyncio.wait_for) leaves the stop running to its end.

        Raises:
            ConfigError: `timeout` is not a finite number of seconds, 0 or more.
            ShutdownError: a loop or the backend failed to stop (after everything else).
            WebSocketStabilizerError: called from another event loop while the node's own
                is still open: shut it down there.
        """
        timeout = wait_seconds("timeout", timeout)
        node = self._current
        if node.ctx.loop_closed():  # nothing of it is left to close: no new node to stop
            return node.lifecycle.ended_with_its_loop(restart)
        return await node.lifecycle.shutdown(timeout, restart)

    def open_session(self, websocket: Any, client_id: str | None = None, *,
                     metadata: dict[str, Any] | None = None, token: str | None = None,
                     positions: str | None = None, welcome: bool = True,
                     identity: Identity | None = None) -> Session:
        """Return a Session that serves one socket from handshake to release; `identity`
        is a user the application authenticated itself (else the authenticator runs)."""
        return Session(self._node.sessions, websocket, client_id, metadata=metadata,
                       token=token, positions=positions, welcome=welcome, identity=identity)

    async def connect(self, client_id: str, websocket: SocketLike,
                      metadata: dict[str, Any] | None = None) -> None:
        """Register an (accepted, or accepted here) WebSocket for `client_id`; an earlier
        socket of the client, on any node, is closed with REPLACED (4500).

        Raises:
            InvalidClientIdError: the id is empty, too long or not text.
            ConnectionLimitExceededError: max_connections or max_cluster_connections reached.
            MemoryLimitExceededError: the metadata or the node would exceed a memory limit.
            ShutdownError: the node is shutting down (it closed the socket first, with its
                shutdown code and retry advice, as session() does).
        """
        await self._node.admission.connect(client_id, websocket, metadata)

    async def disconnect(self, client_id: str, *, code: int = CloseCode.NORMAL,
                         reason: str = "normal closure") -> None:
        """Close and remove the client's connection on this node; from a handler whose socket
        the node already closed (replaced, timed out, evicted), or a task it started after
        connecting (a receive loop in asyncio.gather), it does nothing. With history,
        a normal closure ends the session; any other code leaves it resumable.

        Raises:
            ConnectionNotFoundError: no connection of `client_id` exists on this node.
        """
        if not self._is_client_id(client_id):
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        await self._node.closing.disconnect(client_id, code, reason)

    def get_connection(self, client_id: str) -> Connection | None:
        """Return the local Connection of `client_id`, or None."""
        return self._ctx.pool.get(client_id) if self._is_client_id(client_id) else None

    def is_connected(self, client_id: str) -> bool:
        """True if `client_id` is connected to this node."""
        return self.get_connection(client_id) is not None

    def get_active_connections(self) -> list[str]:
        """Return the client ids connected to this node (see get_cluster_connections)."""
        return self._ctx.pool.client_ids()

    def get_connection_count(self) -> int:
        """Return how many clients are connected to this node."""
        return len(self._ctx.pool)

    async def send_to_client(self, client_id: str, message: Message, *, ack: bool = False,
                             timeout: float = 10.0) -> bool:
        """Send to one client on any node; True if a node took the frame (with history: or
        it is kept for the client's resumable session). False for an unknown, invalid or
        unreachable client.

        With ``ack=True``, return True only once the client acknowledged the message (a v2
        client does after its handler returned), within `timeout` seconds.

        Raises:
            TypeError: the message is not text, bytes or JSON-serializable.
            ConfigError: `timeout` is not a finite number of seconds, 0 or more.
            AckTimeoutError: (ack) sent, but not acknowledged in time.
            AckUnsupportedError: (ack) the client speaks the plain protocol: it got the
                message but cannot acknowledge it.
        """
        payload = encode_message(message)
        timeout = wait_seconds("timeout", timeout)
        if not self._is_client_id(client_id):
            return False
        if ack:
            return await self._node.sessions.acks.send(client_id, payload, json_value(message),
                                                       timeout)
        return await self._node.router.send(client_id, payload, json_value(message))

    async def broadcast(self, message: Message,
                        exclude_client: str | None = None) -> BroadcastResult:
        """Send to every client on every node except `exclude_client` (an id no client can
        have excludes nobody); serialize once.

        Raises:
            BroadcastFailedError: there were recipients and the message reached none of them.
        """
        result = await self._node.router.publish(Target("all"), encode_message(message),
                                                 self._excluded(exclude_client),
                                                 json_value(message))
        self._ctx.stats.broadcasts += 1
        if result.total > 0 and result.succeeded == 0 and result.remote_nodes == 0:
            raise BroadcastFailedError(
                f"broadcast failed for all {result.total} local clients", result)
        return result

    async def handle_pong(self, client_id: str) -> None:
        """Record a pong from `client_id` (unknown ids are ignored)."""
        if self._is_client_id(client_id):
            self._node.liveness.pong(client_id)

    async def ping(self, client_id: str, timeout: float | None = None) -> float:
        """Ping a local client now and return the round-trip time in seconds.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            ConnectionTimeoutError: no answer within `timeout` (default heartbeat_timeout).
            ConfigError: `timeout` is not None nor a finite number of seconds, 0 or more.
        """
        if timeout is not None:
            timeout = wait_seconds("timeout", timeout)
        conn = self.get_connection(client_id)
        if conn is None or not conn.is_open:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        return await self._node.liveness.ping(conn, timeout)

    def generate_reconnect_token(self, client_id: str) -> str:
        """Return a signed single-use token that any node validates within its TTL.

        Raises:
            InvalidClientIdError: the id is not usable.
            WebSocketStabilizerError: tokens are disabled, or no key is known yet (call
                start() first when the key comes from Redis).
        """
        return self._node.tokens.issue(client_id)

    async def validate_reconnect_token(self, token: str) -> str:
        """Check a token, spend it (single use, cluster-wide) and return its client id.

        Raises:
            InvalidTokenError: malformed, forged, foreign, already used, or tokens disabled.
            TokenExpiredError: authentic but expired.
            BackendUnavailable: single use cannot be checked because Redis is unreachable.
        """
        return (await self._node.tokens.consume(token)).client_id

    def total_memory(self) -> int:
        """Approximate bytes held by all local connections."""
        return self._node.memory.total()

    def get_memory_usage(self) -> dict[str, int | float]:
        """Return {total_memory, connection_count, per_connection_average, queued_bytes}."""
        return self._node.memory.usage()

    def check_memory(self) -> int:
        """Enforce max_total_memory now (also run every memory_check_interval); return the
        bytes freed."""
        return self._node.memory.check()

    async def set_user_data(self, client_id: str, key: str, value: Any) -> None:
        """Attach `value` under `key` to the client's connection on this node.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            MemoryLimitExceededError: the value would take the connection over its limit.
        """
        await self._node.memory.set_user_data(client_id, key, value)

    async def get_user_data(self, client_id: str, key: str) -> Any | None:
        """Return the value stored under `key` for the client, or None."""
        return self._node.memory.get_user_data(client_id, key)

    def on_connect(self, hook: Hook) -> Hook:
        """Register a callback (sync or async) run once per local connect; usable as a
        decorator. It receives a ConnectionEvent."""
        return self._node.events.on_connect(hook)

    def on_disconnect(self, hook: Hook) -> Hook:
        """Register a callback run once per local disconnect (code and reason included)."""
        return self._node.events.on_disconnect(hook)

    def on_cluster_event(self, listener: ClusterListener) -> ClusterListener:
        """Register a callback for cluster-wide connect/disconnect/join/leave events.

        Raises:
            ConfigError: cluster_events is not enabled in the config.
        """
        return self._node.events.on_cluster_event(listener)

    def rpc(self, method: str) -> Callable[[H], H]:
        """Register the decorated function as the remote procedure `method` of this node.

        A v2 client's ``rpc(method, params)`` runs it with an RPCCall (params, client id,
        user id) and gets its return value (a JSON value), or an RPCError: the one it
        raised, or ``internal``, ``timeout`` (rpc_timeout) or ``unknown_method``. It runs
        on the node that holds the client's socket; register it on every replica.

        Raises:
            ConfigError: a name a client cannot send (1-128 characters of A-Z a-z 0-9 and
                ``. _ : / -``), or one registered already.
        """
        def register(handler: H) -> H:
            self.add_rpc(method, handler)
            return handler
        return register

    def add_rpc(self, method: str, handler: RPCHandler) -> None:
        """Register `handler` as the remote procedure `method` (see rpc())."""
        self._node.sessions.procedures.register(method, handler)

    def on_subscribe(self, hook: SubscribeHook) -> SubscribeHook:
        """Set the hook (sync or async; usable as a decorator) that decides a v2 client's
        ``subscribe`` to a channel (a group): it gets a SubscribeRequest; None or True
        allows (the client joins the group), False refuses (``forbidden``), an RPCError
        refuses with its code. Without it, clients cannot subscribe themselves.

        Raises:
            ConfigError: a hook is set already.
        """
        return self._node.sessions.channels.on_subscribe(hook)

    def on_publish(self, hook: PublishHook) -> PublishHook:
        """Set the hook that decides a v2 client's ``publish`` to a channel: it gets a
        PublishRequest and returns what to send to the group's members (``data`` as the
        client sent it, or a rewrite); False, None or an RPCError refuses. Without it,
        clients cannot publish.

        Raises:
            ConfigError: a hook is set already.
        """
        return self._node.sessions.channels.on_publish(hook)


__all__ = ["Phase", "WebSocketConnectionManager"]
