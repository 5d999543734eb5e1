"""WebSocketConnectionManager: the facade users call; owns the node's loops.

Local sockets live in a sharded Pool; everything other nodes must see goes through a Backend
(in-process by default, Redis when configured). The manager never awaits a client socket on a
delivery path: broadcast and send hand frames to bounded outboxes and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import msgpack

from stabilizer._util import (
    Message,
    RateLimitedLog,
    backoff_delay,
    check_client_id,
    default_node_id,
    encode_message,
    is_text,
    retry_advice,
    truncate_reason,
)
from stabilizer.backends.base import Backend, Presence, SessionState
from stabilizer.backends.memory import MemoryBackend
from stabilizer.config import CloseCode, HeartbeatType, MemoryEvictionPolicy, WebSocketConfig
from stabilizer.delivery import Delivery, check_group
from stabilizer.errors import (
    BackendUnavailable,
    BroadcastFailedError,
    ConfigError,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    ConnectionTimeoutError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    WebSocketStabilizerError,
)
from stabilizer.heartbeat import Heartbeat, HeartbeatSchedule
from stabilizer.pool import (
    Connection,
    Frame,
    OutboxLimits,
    Pool,
    SocketLike,
    State,
    abort_transport,
    estimate_size,
)
from stabilizer.results import (
    BroadcastResult,
    ClusterEvent,
    ConnectionEvent,
    ShutdownReport,
)
from stabilizer.stats import NodeStats
from stabilizer.streams import resume_frame
from stabilizer.tokens import TokenClaims, TokenCodec

if TYPE_CHECKING:
    from stabilizer.session import Session

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Phase(Enum):
    """Lifecycle of a manager."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


Hook = Callable[[ConnectionEvent], Any]


class WebSocketConnectionManager:
    """Tracks this node's WebSocket connections and reaches clients on every node.

    Drop-in for fastapi-websocket-stabilizer's manager: same methods, same defaults.
    """

    def __init__(
        self,
        config: WebSocketConfig | None = None,
        *,
        backend: Backend | None = None,
        redis: Any = None,
    ) -> None:
        self.config = config if config is not None else WebSocketConfig()
        self.config.apply_log_level()
        self._node_id = self.config.node_id or default_node_id()
        self._backend: Backend = backend if backend is not None else _make_backend(
            self.config, redis
        )
        self._pool = Pool(self.config.num_shards)
        self._limits = OutboxLimits(
            self.config.max_queue_size, self.config.max_memory_per_connection,
            self.config.write_timeout,
        )
        schedule: HeartbeatSchedule[Connection] = HeartbeatSchedule(
            self.config.heartbeat_interval, self.config.heartbeat_timeout,
            send_pings=self.config.heartbeat_type is HeartbeatType.PING,
        )
        self._heartbeat = Heartbeat(schedule, self._send_pings, self._expire)
        self._codec = self._initial_codec()
        self._phase = Phase.NEW
        self._starting: asyncio.Future[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[Any]] = set()
        self._cleanup_slots = asyncio.Semaphore(self.config.max_concurrent_cleanup)
        self._departed: weakref.WeakKeyDictionary[asyncio.Task[Any], set[str]] = (
            weakref.WeakKeyDictionary()
        )
        self._admitting: dict[str, asyncio.Future[None]] = {}
        self._needs_resync = False
        self._joined = False
        self._shutdown_code = self.config.shutdown_close_code
        self._backend_log = RateLimitedLog(logger)
        self._connect_hooks: list[Hook] = []
        self._disconnect_hooks: list[Hook] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = NodeStats()
        self.delivery = Delivery(self)
        if self.config.cluster_events and hasattr(self._backend, "events"):
            self._backend.events = True

    # ------------------------------------------------------------------ properties

    @property
    def node_id(self) -> str:
        """This node's id (config.node_id, or host-pid-random)."""
        return self._node_id

    @property
    def backend(self) -> Backend:
        """The backend this manager talks to."""
        return self._backend

    @property
    def pool(self) -> Pool:
        """This node's connections."""
        return self._pool

    @property
    def phase(self) -> Phase:
        """new, running, draining (shutting down) or stopped."""
        return self._phase

    @property
    def shutdown_close_code(self) -> CloseCode:
        """The code sockets get when this node shuts down (or refuses them while it does)."""
        return self._shutdown_code

    @property
    def is_accepting(self) -> bool:
        """True while new connections are admitted."""
        return self._phase in (Phase.NEW, Phase.RUNNING)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the heartbeat, maintenance and (with a shared backend) listener loops.

        Idempotent; connect() calls it if the application did not.

        Raises:
            ShutdownError: the manager was already shut down.
        """
        if self._phase is Phase.RUNNING:
            if self._starting is not None:
                await asyncio.shield(self._starting)
            return
        if self._phase is not Phase.NEW:
            raise ShutdownError("this manager was shut down; create a new one")
        self._phase = Phase.RUNNING
        self._starting = asyncio.get_running_loop().create_future()
        try:
            await self._open_backend()
            self._spawn_loops()
            if self._backend.is_shared or self.config.history_enabled:
                # Ready means subscribed: a broadcast from another node now reaches us.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.op_timeout):
                        await self._backend.subscribed.wait()
        finally:
            self._starting.set_result(None)
            self._starting = None
        logger.info("stabilizer node %s started (backend %s)", self._node_id,
                    self._backend.name)

    async def _open_backend(self) -> None:
        try:
            async with asyncio.timeout(self.config.op_timeout * 2):
                await self._backend.open(self._node_id)
        except (BackendUnavailable, TimeoutError) as exc:
            self._needs_resync = True
            self._backend_log.warning("backend %s unreachable at start; node runs locally and "
                                      "retries", self._backend.name, exc=exc)
        if self._codec is None:
            await self._fetch_shared_key()
        if not self.config.token_keys and not self._backend.is_shared:
            logger.info("no token_secret configured: reconnect tokens are valid only until "
                        "this process exits")

    def _spawn_loops(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops.append(loop.create_task(self._heartbeat.run(), name="stabilizer-heartbeat"))
        self._loops.append(loop.create_task(self._maintain(), name="stabilizer-maintenance"))
        if self._backend.is_shared or self.config.history_enabled:
            self._loops.append(
                loop.create_task(self.delivery.listen(), name="stabilizer-listener")
            )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.graceful_shutdown()

    # ------------------------------------------------------------------ admission

    async def connect(
        self,
        client_id: str,
        websocket: SocketLike,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Register an (accepted, or accepted here) WebSocket for `client_id`.

        A second connect with the same id replaces the first, on any node: the old socket is
        closed with CloseCode.REPLACED (4500).

        Raises:
            InvalidClientIdError: the id is empty, too long or not text.
            ConnectionLimitExceededError: max_connections or max_cluster_connections reached.
            MemoryLimitExceededError: the metadata or the node would exceed a memory limit.
            ShutdownError: the node is shutting down.
        """
        await self.admit(client_id, websocket, metadata)

    async def admit(
        self,
        client_id: str,
        websocket: SocketLike,
        metadata: dict[str, Any] | None = None,
        *,
        resuming: bool = False,
    ) -> Connection:
        """Like connect(), but return the Connection handle (used by Session).

        With history enabled and `resuming`, live frames are held until resume() replays
        what the client missed; otherwise any earlier session of the client ends.
        """
        check_client_id(client_id, self.config.max_client_id_length)
        if not self.is_accepting:
            raise ShutdownError("node is shutting down; connect to another node")
        if self._phase is Phase.NEW:
            await self.start()
        await _accept_if_needed(websocket)
        while (pending := self._admitting.get(client_id)) is not None:
            await asyncio.shield(pending)
        done = asyncio.get_running_loop().create_future()
        self._admitting[client_id] = done
        try:
            return await self._admit_locked(client_id, websocket, metadata, resuming)
        finally:
            del self._admitting[client_id]
            done.set_result(None)

    async def _admit_locked(
        self, client_id: str, websocket: SocketLike, metadata: dict[str, Any] | None,
        resuming: bool,
    ) -> Connection:
        owner = asyncio.current_task()
        conn = Connection(client_id, websocket, self._limits, self._on_conn_failed,
                          metadata=metadata, owner=owner)
        self._check_local_limits(conn)
        if self.config.history_enabled and resuming:
            conn.hold = []
        await self._register_presence(conn)
        if self.config.history_enabled and not resuming:
            await self._open_session(conn, fresh=True)
        if not self.is_accepting:  # shutdown began while we waited on the backend
            await self._unregister_presence(conn)
            raise ShutdownError("node is shutting down; connect to another node")
        replaced = self._pool.put(conn)
        if replaced is not None and replaced.is_open:
            self._heartbeat.schedule.forget(replaced)
            self._retire(replaced, CloseCode.REPLACED, "replaced by a newer connection",
                         in_pool=False)
        if owner is not None and (gone := self._departed.get(owner)) is not None:
            gone.discard(client_id)
        self._heartbeat.track(conn, asyncio.get_running_loop().time())
        self.stats.connects += 1
        logger.info("client %r connected (conn %s, node %s)", client_id, conn.conn_id,
                    self._node_id)
        await self._run_hooks(self._connect_hooks, ConnectionEvent(
            client_id, conn.conn_id, self._node_id, resumed=resuming))
        await self.delivery.publish_event("connect", client_id)
        return conn

    async def _open_session(self, conn: Connection, *, fresh: bool) -> None:
        try:
            async with asyncio.timeout(self.config.op_timeout * 2):
                if fresh:  # a fresh session: whatever the client had before ends
                    await self._backend.end_session(conn.client_id)
                await self._backend.open_session(conn.client_id, fresh=fresh)
        except (BackendUnavailable, TimeoutError) as exc:
            self._backend_log.warning("session of %r not opened (backend unavailable)",
                                      conn.client_id, exc=exc)

    async def resume(
        self, conn: Connection, positions: dict[str, tuple[int, str]]
    ) -> tuple[bool, int, list[str]]:
        """Restore a resumed client's groups and user data, replay what it missed since
        `positions`, then let live traffic through. Returns (recovered, replayed, failed).

        Only the client's own streams are replayed: ``all``, its groups, ``c:<client_id>``.
        """
        try:
            state = await self._backend_call(self._backend.load_session(conn.client_id))
        except BackendUnavailable:
            state = None
        if state is None:  # session expired or lost: nothing can be vouched for
            await self._open_session(conn, fresh=True)
            failed = sorted(positions) or ["*"]
            now = time.monotonic()
            conn.offer(Frame.text(resume_frame(0, failed)), now)
            held, conn.hold = conn.hold or [], None
            for _, _, frame in held:  # live frames since admission, in order
                conn.offer(frame, now)
            return False, 0, failed
        await self._open_session(conn, fresh=False)
        await self._restore(conn, state)
        streams = {"all", f"c:{conn.client_id}", *(f"g:{g}" for g in state.groups)}
        # a stream the client holds no position for is replayed from where it stood when
        # the session began (or the client joined the group)
        starts = {stream: positions.get(stream) or state.baselines.get(stream)
                  for stream in streams}
        replayed, failed = await self.delivery.replay(
            conn, {k: v for k, v in starts.items() if v is not None}, streams)
        return not failed, replayed, failed

    async def _restore(self, conn: Connection, state: SessionState) -> None:
        for group in state.groups:
            await self.delivery.join_local(conn, group)
        for key, raw in state.user_data.items():
            try:
                value = msgpack.unpackb(raw)
            except (ValueError, msgpack.UnpackException):
                logger.warning("user data %r of %r is unreadable; dropped", key, conn.client_id)
                continue
            conn.user_data[key] = value
            conn.user_data_bytes += estimate_size(key) + estimate_size(value)

    def _check_local_limits(self, conn: Connection) -> None:
        config = self.config
        size = conn.memory_estimate()
        if config.max_memory_per_connection is not None and size > config.max_memory_per_connection:
            raise MemoryLimitExceededError(
                f"connection needs {size} bytes; max_memory_per_connection is "
                f"{config.max_memory_per_connection}"
            )
        is_new = self._pool.get(conn.client_id) is None
        if is_new and config.max_connections is not None and (
            len(self._pool) >= config.max_connections
        ):
            raise ConnectionLimitExceededError(
                f"maximum connections ({config.max_connections}) reached on node "
                f"{self._node_id}"
            )
        if config.max_total_memory is not None:
            total = self.total_memory()
            if total + size > config.max_total_memory:
                self._evict_for_memory(total + size - config.max_total_memory)
                total = self.total_memory()
                if total + size > config.max_total_memory:
                    raise MemoryLimitExceededError(
                        f"cannot free enough memory: {total} used, {size} needed, limit "
                        f"{config.max_total_memory}"
                    )

    async def _register_presence(self, conn: Connection) -> None:
        presence = Presence(conn.client_id, self._node_id, conn.conn_id, conn.created_at)
        try:
            async with asyncio.timeout(self.config.op_timeout):
                await self._backend.register(
                    presence, max_cluster=self.config.max_cluster_connections
                )
        except (BackendUnavailable, TimeoutError) as exc:
            # Degrade: the socket works locally; presence is re-registered when we reconnect.
            self._needs_resync = True
            self._backend_log.warning("presence of %r not registered (backend unavailable); "
                                      "will re-register", conn.client_id, exc=exc)

    async def _unregister_presence(self, conn: Connection) -> None:
        if not self._backend.available:
            return
        try:
            async with asyncio.timeout(self.config.op_timeout):
                await self._backend.unregister(conn.client_id, conn.conn_id)
        except (BackendUnavailable, TimeoutError) as exc:
            self._needs_resync = True
            self._backend_log.warning("presence of %r not removed (backend unavailable)",
                                      conn.client_id, exc=exc)

    # ------------------------------------------------------------------ hooks

    def on_connect(self, hook: Hook) -> Hook:
        """Register a callback (sync or async) run once per local connect; usable as a
        decorator. It receives a ConnectionEvent."""
        self._connect_hooks.append(hook)
        return hook

    def on_disconnect(self, hook: Hook) -> Hook:
        """Register a callback run once per local disconnect (code and reason included)."""
        self._disconnect_hooks.append(hook)
        return hook

    def on_cluster_event(
        self, listener: Callable[[ClusterEvent], Any]
    ) -> Callable[[ClusterEvent], Any]:
        """Register a callback for cluster-wide connect/disconnect/join/leave events.

        Raises:
            ConfigError: cluster_events is not enabled in the config.
        """
        if not self.config.cluster_events:
            raise ConfigError("set cluster_events=True to receive cluster events")
        self.delivery.event_listeners.append(listener)
        return listener

    async def _run_hooks(self, hooks: list[Hook], event: ConnectionEvent) -> None:
        for hook in hooks:
            try:
                outcome = hook(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("%s hook %r failed", "connect" if event.code is None
                                 else "disconnect", hook)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run a background task owned by this manager (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def request_resync(self) -> None:
        """Re-register local presence at the next maintenance step."""
        self._needs_resync = True

    # ------------------------------------------------------------------ removal

    async def disconnect(
        self,
        client_id: str,
        *,
        code: int = CloseCode.NORMAL,
        reason: str = "normal closure",
    ) -> None:
        """Close and remove the client's connection on this node.

        With history enabled, a normal closure (the default code) ends the client's
        session; any other code leaves it resumable for session_ttl.

        Called from the handler whose socket was already replaced, timed out or evicted, it
        does nothing: connection identity decides, so it never closes a newer socket.

        Raises:
            ConnectionNotFoundError: no connection of `client_id` exists on this node.
        """
        task = asyncio.current_task()
        gone = self._departed.get(task) if task is not None else None
        if gone is not None and client_id in gone:
            gone.discard(client_id)
            return
        conn = self._pool.get(client_id) if is_text(client_id) else None
        if conn is None:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        await self.release(conn, code=code, reason=reason)

    async def release(
        self,
        conn: Connection,
        *,
        code: int = CloseCode.NORMAL,
        reason: str = "normal closure",
        keep_session: bool | None = None,
    ) -> bool:
        """Close `conn` (this exact socket) and drop its presence; False if already closed.

        With history, the session stays resumable for session_ttl unless `keep_session` is
        False (an explicit end; the default for a normal closure); without history the
        client leaves its groups now.
        """
        if not self._detach(conn):
            return False
        await self._finish_close(conn, code, reason, keep_session=keep_session)
        return True

    def _detach(self, conn: Connection, *, in_pool: bool = True) -> bool:
        """Synchronously take `conn` out of service; False if it already was."""
        if conn.state is not State.OPEN:
            return False
        conn.begin_close()
        if in_pool:
            self._pool.remove(conn)
        self._heartbeat.schedule.forget(conn)
        if conn.owner is not None and conn.owner is not asyncio.current_task():
            self._departed.setdefault(conn.owner, set()).add(conn.client_id)
        return True

    def _retire(self, conn: Connection, code: int, reason: str, *, in_pool: bool = True) -> None:
        """Take `conn` out of service now and close its socket in the background."""
        if not self._detach(conn, in_pool=in_pool):
            return
        if code == CloseCode.REPLACED:
            self.stats.replaced += 1
        task = asyncio.get_running_loop().create_task(
            self._finish_close(conn, code, reason, presence=code != CloseCode.REPLACED),
            name=f"stabilizer-close-{conn.conn_id}",
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def retire(self, conn: Connection, code: int, reason: str) -> None:
        """Close `conn` in the background with `code` (used by delivery for kicks)."""
        self._retire(conn, code, reason)

    def offer(self, conn: Connection, frame: Frame) -> bool:
        """Give `conn` a frame now (counted in the node's stats)."""
        return self._offer(conn, frame, time.monotonic())

    def _on_conn_failed(self, conn: Connection, code: int, reason: str) -> None:
        logger.info("closing client %r (conn %s): %s", conn.client_id, conn.conn_id, reason)
        if code == CloseCode.TRY_AGAIN_LATER:
            self.stats.overflow_closes += 1
            reason = retry_advice(self.config.retry_jitter)
        self._retire(conn, code, reason)

    async def _finish_close(
        self, conn: Connection, code: int, reason: str, *, presence: bool = True,
        keep_session: bool | None = None,
    ) -> bool:
        async with self._cleanup_slots:
            if presence:
                await self._unregister_presence(conn)
            clean = await self._close_socket(conn, code, reason)
        await self._after_close(conn, code, reason, keep_session)
        return clean

    async def _after_close(
        self, conn: Connection, code: int, reason: str, keep_session: bool | None
    ) -> None:
        """Bookkeeping once a socket is closed: groups, session, hooks, events (once)."""
        conn.state = State.CLOSED
        self.stats.disconnects += 1
        logger.info("client %r disconnected (conn %s, code %d)", conn.client_id, conn.conn_id,
                    code)
        had_groups = bool(conn.groups)
        await self.delivery.forget_connection(conn)
        if code != CloseCode.REPLACED:
            await self._settle_session(conn, code, keep_session, had_groups)
        await self._run_hooks(self._disconnect_hooks, ConnectionEvent(
            conn.client_id, conn.conn_id, self._node_id, code=code, reason=reason))
        if code != CloseCode.REPLACED:
            await self.delivery.publish_event("disconnect", conn.client_id)

    async def _settle_session(
        self, conn: Connection, code: int, keep_session: bool | None, had_groups: bool
    ) -> None:
        if keep_session is None:
            keep_session = code != CloseCode.NORMAL
        try:
            async with asyncio.timeout(self.config.op_timeout):
                if self.config.history_enabled and keep_session:
                    await self._backend.suspend_session(conn.client_id, self.config.session_ttl)
                elif self.config.history_enabled or had_groups:
                    await self._backend.end_session(conn.client_id)
        except (BackendUnavailable, TimeoutError) as exc:
            self._backend_log.warning("session of %r not settled (backend unavailable)",
                                      conn.client_id, exc=exc)

    async def _close_socket(self, conn: Connection, code: int, reason: str) -> bool:
        """Send a close frame within close_timeout; abort the transport if it cannot go."""
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await conn.socket.close(code=int(code), reason=truncate_reason(reason))
        except TimeoutError:
            abort_transport(conn.socket)
            return False
        except Exception:  # the peer is already gone: nothing left to close
            logger.debug("close of %s raised; peer already gone", conn.conn_id, exc_info=True)
        return True

    # ------------------------------------------------------------------ delivery

    async def send_to_client(self, client_id: str, message: Message) -> bool:
        """Send to one client on any node; True if a node holds it and took the frame (with
        history: or the message is kept for its resumable session).

        Never raises for delivery problems: an unknown, invalid or unreachable client gives
        False. A message that is not text, bytes or JSON-serializable raises TypeError.
        """
        payload = encode_message(message)
        if not is_text(client_id) or not client_id:
            return False
        return await self.delivery.send(client_id, payload)

    def _offer(self, conn: Connection, frame: Frame, now: float) -> bool:
        if conn.offer(frame, now):
            self.stats.messages_out += 1
            self.stats.bytes_out += frame.size
            return True
        return False

    async def broadcast(
        self, message: Message, exclude_client: str | None = None
    ) -> BroadcastResult:
        """Send to every client on every node except `exclude_client`; serialize once.

        Returns a BroadcastResult counting local recipients (see its docstring).

        Raises:
            BroadcastFailedError: there were recipients and the message reached none of them
                (every local one failed and no other node was reached). `.result` has details.
        """
        payload = encode_message(message)
        result = await self.delivery.broadcast(payload, exclude_client)
        self.stats.broadcasts += 1
        if result.total > 0 and result.succeeded == 0 and result.remote_nodes == 0:
            raise BroadcastFailedError(
                f"broadcast failed for all {result.total} local clients", result
            )
        return result

    # ------------------------------------------------------------------ groups

    async def join_group(self, client_id: str, group: str) -> None:
        """Add a client connected to any node to `group` (cluster-wide).

        Raises:
            ValueError: the group name is empty, too long or not text.
            ConnectionNotFoundError: the client is not connected anywhere.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self.config.max_client_id_length)
        await self.delivery.join(client_id, group)

    async def leave_group(self, client_id: str, group: str) -> None:
        """Remove a client from `group` (no error if it was not a member).

        Raises:
            ValueError: the group name is not usable.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self.config.max_client_id_length)
        await self.delivery.leave(client_id, group)

    async def send_to_group(
        self, group: str, message: Message, exclude_client: str | None = None
    ) -> BroadcastResult:
        """Send to every member of `group` on every node; serialize once.

        Only nodes with local members receive it. The result counts local members.

        Raises:
            ValueError: the group name is not usable.
        """
        check_group(group)
        payload = encode_message(message)
        return await self.delivery.send_to_group(group, payload, exclude_client)

    async def get_group_members(self, group: str) -> list[str]:
        """Return the members of `group` on every node (while a session is resumable its
        client stays a member).

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        return await self._backend_call(self._backend.group_members(group))

    async def get_client_groups(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to (cluster-wide).

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._backend_call(self._backend.client_groups(client_id))

    # ------------------------------------------------------------------ inbound

    def heard_from(self, conn: Connection) -> None:
        """Record inbound traffic on `conn` (any frame proves the client is alive)."""
        conn.last_activity = time.monotonic()
        self._heartbeat.schedule.seen(conn, asyncio.get_running_loop().time())
        if conn.pong_waiters:
            sent_at = time.monotonic()
            for waiter in conn.pong_waiters:
                if not waiter.done():
                    waiter.set_result(sent_at)
            conn.pong_waiters = None

    async def handle_pong(self, client_id: str) -> None:
        """Record a pong from `client_id` (unknown ids are ignored)."""
        conn = self._pool.get(client_id) if is_text(client_id) else None
        if conn is not None:
            self.stats.pongs += 1
            self.heard_from(conn)

    async def ping(self, client_id: str, timeout: float | None = None) -> float:
        """Ping a local client now and return the round-trip time in seconds.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            ConnectionTimeoutError: no answer within `timeout` (default heartbeat_timeout).
        """
        conn = self._pool.get(client_id) if is_text(client_id) else None
        if conn is None or not conn.is_open:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if conn.pong_waiters is None:
            conn.pong_waiters = []
        conn.pong_waiters.append(waiter)
        sent_at = time.monotonic()
        self._offer(conn, self._ping_frame(), sent_at)
        limit = self.config.heartbeat_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                answered_at = await waiter
        except TimeoutError as exc:
            raise ConnectionTimeoutError(
                f"client {client_id!r} did not answer a ping within {limit:g}s"
            ) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if waiter.cancelled() and task is not None and task.cancelling() == 0:
                raise ConnectionNotFoundError(
                    f"client {client_id!r} disconnected before answering"
                ) from None
            raise
        return answered_at - sent_at

    @staticmethod
    def _ping_frame() -> Frame:
        return Frame.text(
            json.dumps({"type": "ping", "timestamp": time.time()}, separators=(",", ":"))
        )

    async def _send_pings(self, conns: list[Connection]) -> None:
        frame = self._ping_frame()
        now = time.monotonic()
        slice_size = self.config.max_concurrent_broadcast
        for start in range(0, len(conns), slice_size):
            for conn in conns[start:start + slice_size]:
                self._offer(conn, frame, now)
            self.stats.pings_sent += min(slice_size, len(conns) - start)
            if start + slice_size < len(conns):
                await asyncio.sleep(0)

    async def _expire(self, conns: list[Connection]) -> None:
        for conn in conns:
            if conn.is_open:
                self.stats.heartbeat_timeouts += 1
                logger.info("client %r missed its heartbeat deadline; closing", conn.client_id)
                self._retire(conn, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")

    # ------------------------------------------------------------------ queries

    def get_active_connections(self) -> list[str]:
        """Return the client ids connected to this node (not the cluster: see
        get_cluster_connections)."""
        return self._pool.client_ids()

    def get_connection_count(self) -> int:
        """Return how many clients are connected to this node."""
        return len(self._pool)

    def get_connection(self, client_id: str) -> Connection | None:
        """Return the local Connection of `client_id`, or None."""
        return self._pool.get(client_id) if is_text(client_id) else None

    def is_connected(self, client_id: str) -> bool:
        """True if `client_id` is connected to this node."""
        return self.get_connection(client_id) is not None

    async def get_cluster_connection_count(self) -> int:
        """Count clients connected to any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._backend_call(self._backend.count())

    async def get_cluster_connections(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield the presence of every client on every node, a batch per round trip.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        async for presence in self._backend.scan(batch):
            yield presence

    async def locate_client(self, client_id: str) -> str | None:
        """Return the id of the node holding `client_id`, or None.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not is_text(client_id) or not client_id:
            return None
        presence = await self._backend_call(self._backend.locate(client_id))
        return None if presence is None else presence.node_id

    async def get_nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        return await self._backend_call(self._backend.nodes())

    async def _backend_call(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.config.op_timeout):
                return await awaitable
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"backend did not answer within {self.config.op_timeout:g}s"
            ) from exc

    # ------------------------------------------------------------------ tokens

    def _initial_codec(self) -> TokenCodec | None:
        keys = [key.encode("utf-8") for key in self.config.token_keys]
        if not keys and isinstance(self._backend, MemoryBackend):
            keys = [self._backend.hub.secret]
        return TokenCodec(keys, self.config.namespace) if keys else None

    async def _fetch_shared_key(self) -> bool:
        try:
            async with asyncio.timeout(self.config.op_timeout):
                key = await self._backend.shared_secret()
        except (BackendUnavailable, TimeoutError) as exc:
            self._backend_log.warning("shared token key not available yet", exc=exc)
            return False
        self._codec = TokenCodec([key], self.config.namespace)
        return True

    def generate_reconnect_token(self, client_id: str) -> str:
        """Return a signed single-use token that any node can validate within its TTL.

        Raises:
            InvalidClientIdError: the id is not usable.
            WebSocketStabilizerError: tokens are disabled, or no key is known yet (call
                start() first when the key comes from Redis).
        """
        if not self.config.enable_reconnect:
            raise WebSocketStabilizerError("reconnect tokens are disabled (enable_reconnect)")
        check_client_id(client_id, self.config.max_client_id_length)
        if self._codec is None:
            raise WebSocketStabilizerError(
                "no token key yet: await manager.start() first, or set token_secret"
            )
        self.stats.tokens_issued += 1
        return self._codec.sign(client_id, now=time.time(), ttl=self.config.token_ttl_seconds)

    async def validate_reconnect_token(self, token: str) -> str:
        """Check a token, consume it (single use, cluster-wide) and return its client id.

        Raises:
            InvalidTokenError: malformed, forged, foreign, already used, or tokens disabled.
            TokenExpiredError: authentic but expired.
            BackendUnavailable: single use cannot be checked because Redis is unreachable.
        """
        return (await self.consume_reconnect_token(token)).client_id

    async def consume_reconnect_token(self, token: str) -> TokenClaims:
        """validate_reconnect_token, returning all claims (restore_reconnect_token undoes
        the consumption when the connection it was for is refused)."""
        if not self.config.enable_reconnect:
            raise InvalidTokenError("reconnect tokens are disabled (enable_reconnect)")
        if self._codec is None and not await self._fetch_shared_key():
            raise BackendUnavailable("token key unavailable: the backend cannot be reached")
        assert self._codec is not None
        claims = self._codec.verify(token, now=time.time())
        fresh = await self._backend_call(
            self._backend.consume_token(claims.nonce, claims.expires_at)
        )
        if not fresh:
            raise InvalidTokenError("token was already used; request a new one")
        return claims

    async def restore_reconnect_token(self, claims: TokenClaims) -> None:
        """Make a consumed token usable again (its connection was refused); best effort."""
        try:
            await self._backend_call(self._backend.restore_token(claims.nonce))
        except BackendUnavailable:
            logger.warning("token of %r could not be restored", claims.client_id)

    # ------------------------------------------------------------------ memory and user data

    def total_memory(self) -> int:
        """Approximate bytes held by all local connections."""
        return sum(conn.memory_estimate() for conn in self._pool.connections())

    def get_memory_usage(self) -> dict[str, int | float]:
        """Return {total_memory, connection_count, per_connection_average, queued_bytes}."""
        total = 0
        queued = 0
        count = 0
        for conn in self._pool.connections():
            total += conn.memory_estimate()
            queued += conn.queued_bytes
            count += 1
        return {
            "total_memory": total,
            "connection_count": count,
            "per_connection_average": total / count if count else 0.0,
            "queued_bytes": queued,
        }

    async def set_user_data(self, client_id: str, key: str, value: Any) -> None:
        """Attach `value` under `key` to the client's connection on this node.

        Raises:
            ConnectionNotFoundError: the client is not connected to this node.
            MemoryLimitExceededError: the value would take the connection over its limit.
        """
        conn = self.get_connection(client_id)
        if conn is None:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        new_size = estimate_size(key) + estimate_size(value)
        old_size = (
            estimate_size(key) + estimate_size(conn.user_data[key])
            if key in conn.user_data else 0
        )
        limit = self.config.max_memory_per_connection
        if limit is not None and conn.memory_estimate() - old_size + new_size > limit:
            raise MemoryLimitExceededError(
                f"user data {key!r} would take client {client_id!r} to "
                f"{conn.memory_estimate() - old_size + new_size} bytes; limit is {limit}"
            )
        if self.config.history_enabled:  # the session keeps it for a resume
            try:
                packed = msgpack.packb(value, use_bin_type=True)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"user data {key!r} must be msgpack-serializable when history is enabled"
                ) from exc
            try:
                await self._backend_call(
                    self._backend.save_user_data(client_id, key, packed))
            except BackendUnavailable as exc:
                self._backend_log.warning("user data %r of %r kept locally only", key,
                                          client_id, exc=exc)
        conn.user_data[key] = value
        conn.user_data_bytes += new_size - old_size

    async def get_user_data(self, client_id: str, key: str) -> Any | None:
        """Return the value stored under `key` for the client, or None."""
        conn = self.get_connection(client_id)
        return None if conn is None else conn.user_data.get(key)

    def _evict_for_memory(self, needed: int) -> int:
        """Close connections by the eviction policy until `needed` bytes are freed."""
        if self.config.memory_eviction_policy is MemoryEvictionPolicy.LRU:
            order = sorted(self._pool.connections(), key=lambda c: c.last_activity)
        else:
            order = sorted(self._pool.connections(), key=lambda c: c.created_at)
        freed = 0
        for conn in order:
            if freed >= needed:
                break
            freed += conn.memory_estimate()
            self.stats.memory_evictions += 1
            logger.info("evicting client %r under memory pressure (policy %s)",
                        conn.client_id, self.config.memory_eviction_policy.value)
            self._retire(conn, CloseCode.MEMORY_EVICTED, "evicted: node over its memory limit")
        return freed

    def check_memory(self) -> int:
        """Enforce max_total_memory now; return bytes freed (also run every
        memory_check_interval)."""
        limit = self.config.max_total_memory
        if limit is None:
            return 0
        total = self.total_memory()
        return self._evict_for_memory(total - limit) if total > limit else 0

    # ------------------------------------------------------------------ loops

    async def _maintain(self) -> None:
        """Keepalive, reaping, resync, token key and memory checks; ends by cancellation."""
        loop = asyncio.get_running_loop()
        keep_every = self.config.node_ttl / 3
        memory_every = self.config.memory_check_interval
        next_memory = loop.time() + memory_every
        failures = 0
        while True:
            try:
                await self._maintain_backend()
                failures = 0
            except (BackendUnavailable, TimeoutError) as exc:
                failures += 1
                self._needs_resync = True
                self._backend_log.warning("backend maintenance failed", exc=exc)
            except Exception:
                logger.exception("maintenance step failed; the loop goes on")
            if loop.time() >= next_memory:
                next_memory = loop.time() + memory_every
                try:
                    self.check_memory()
                except Exception:
                    logger.exception("memory check failed; the loop goes on")
            delay = keep_every if failures == 0 else min(keep_every, backoff_delay(failures))
            await asyncio.sleep(min(delay, max(0.0, next_memory - loop.time())) or 0.01)

    async def _maintain_backend(self) -> None:
        async with asyncio.timeout(self.config.op_timeout * 4):
            session_ttl = self.config.session_ttl if self.config.history_enabled else 0.0
            liveness = await self._backend.keepalive(self.config.node_ttl, session_ttl)
            await self._backend.sweep_sessions()
            if liveness.reaped:
                logger.warning("reaped presence of dead nodes %s", ", ".join(liveness.reaped))
            if liveness.rejoined and self._joined:
                logger.warning("node %s had vanished from the registry; re-registering",
                               self._node_id)
                self._needs_resync = True
            self._joined = True
            if self._needs_resync:
                self._needs_resync = False
                lost = await self._backend.resync(self._local_presence())
                logger.info("presence of %d local clients re-registered", len(self._pool))
                for client_id in lost:
                    conn = self._pool.get(client_id)
                    if conn is not None:
                        self._retire(conn, CloseCode.REPLACED,
                                     "replaced by a connection on another node")
            if self._codec is None:
                await self._fetch_shared_key()

    def _local_presence(self) -> list[Presence]:
        return [Presence(c.client_id, self._node_id, c.conn_id, c.created_at)
                for c in self._pool.connections()]

    # ------------------------------------------------------------------ shutdown

    async def graceful_shutdown(
        self, timeout: float = 30.0, *, restart: bool | None = None
    ) -> ShutdownReport:
        """Stop admitting, drain outboxes until the deadline, close every socket, stop loops.

        Sockets are closed with 1001, or 1012 when the node is restarting (config
        shutdown_mode="restart", or restart=True here). Presence is removed and the backend
        closed. Idempotent: a second call returns an empty report.

        Raises:
            ShutdownError: a loop or the backend failed to stop cleanly (after everything
                else was done).
        """
        started = time.monotonic()
        if restart is None:
            code = self.config.shutdown_close_code
        else:
            code = CloseCode.SERVICE_RESTART if restart else CloseCode.GOING_AWAY
        if self._phase in (Phase.DRAINING, Phase.STOPPED):
            return ShutdownReport(0, 0, 0.0, close_code=int(self._shutdown_code))
        self._shutdown_code = code
        self._phase = Phase.DRAINING
        logger.info("node %s shutting down: %d connections, close code %d", self._node_id,
                    len(self._pool), code)
        deadline = asyncio.get_running_loop().time() + timeout
        conns = list(self._pool.connections())
        outcomes = await asyncio.gather(
            *(self._shutdown_one(conn, int(code), deadline) for conn in conns)
        )
        problems = await self._stop_everything(deadline)
        report = ShutdownReport(
            closed_count=sum(1 for clean, _, _ in outcomes if clean),
            failed_count=sum(1 for clean, _, _ in outcomes if not clean),
            duration_seconds=time.monotonic() - started,
            drained_frames=sum(drained for _, drained, _ in outcomes),
            dropped_frames=sum(dropped for _, _, dropped in outcomes),
            close_code=int(code),
        )
        self._phase = Phase.STOPPED
        logger.info("node %s stopped: closed=%d failed=%d in %.2fs", self._node_id,
                    report.closed_count, report.failed_count, report.duration_seconds)
        if problems:
            raise ShutdownError("shutdown finished with errors: " + "; ".join(problems))
        return report

    async def _shutdown_one(
        self, conn: Connection, code: int, deadline: float
    ) -> tuple[bool, int, int]:
        async with self._cleanup_slots:
            queued = len(conn.outbox) + (1 if conn.writing else 0)
            left = await conn.flush(deadline)
            if not self._detach(conn):
                return True, 0, 0
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(remaining, 0.05)):
                    clean = await self._close_socket(
                        conn, code, _shutdown_reason(code, self.config.retry_jitter)
                    )
            except TimeoutError:
                abort_transport(conn.socket)
                clean = False
            await self._after_close(conn, code, "shutdown", None)
            return clean, max(queued - left, 0), left

    async def _stop_everything(self, deadline: float) -> list[str]:
        problems: list[str] = []
        grace = self.config.close_timeout
        problems += await _cancel_and_wait(self._loops, grace)
        self._loops.clear()
        problems += await _cancel_and_wait(list(self._tasks), grace)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.1)
        if self._closers:
            _, pending = await asyncio.wait(list(self._closers), timeout=remaining)
            for task in pending:
                task.cancel()
        try:
            async with asyncio.timeout(self.config.op_timeout):
                if self._backend.available:
                    await self._backend.unregister_node()
        except (BackendUnavailable, TimeoutError) as exc:
            problems.append(f"presence not removed: {exc!r}")
        try:
            async with asyncio.timeout(self.config.op_timeout):
                await self._backend.aclose()
        except Exception as exc:
            problems.append(f"backend close: {exc!r}")
        return problems

    def open_session(
        self,
        websocket: Any,
        client_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
        positions: str | None = None,
        welcome: bool = True,
    ) -> Session:
        """Return a Session that serves one socket from admission to release."""
        from stabilizer.session import Session

        return Session(self, websocket, client_id, metadata=metadata, token=token,
                       positions=positions, welcome=welcome)


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]], grace: float) -> list[str]:
    """Cancel `tasks` and wait up to `grace` seconds; describe any that failed or hung."""
    if not tasks:
        return []
    pending: set[asyncio.Task[Any]] = set(tasks)
    for attempt in range(3):  # some libraries swallow a cancellation: ask again
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace / 3)
        if not pending:
            break
        logger.warning("%d task(s) ignored cancellation %d: %s", len(pending), attempt + 1,
                       ", ".join(task.get_name() for task in pending))
    done = [task for task in tasks if task.done()]
    problems = [f"{task.get_name()} did not stop within {grace:g}s" for task in pending]
    for task in pending:
        logger.error("task %s does not stop; its stack:\n%s", task.get_name(),
                     "".join(traceback.format_stack(task.get_stack()[-1]))
                     if task.get_stack() else "(none)")
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            problems.append(f"{task.get_name()}: {task.exception()!r}")
    return problems


def _shutdown_reason(code: int, jitter: float) -> str:
    if code == CloseCode.SERVICE_RESTART:
        return retry_advice(jitter)
    return "server shutting down"


async def _accept_if_needed(websocket: SocketLike) -> None:
    """Accept a Starlette WebSocket that is still CONNECTING (the seed required accept())."""
    state = getattr(websocket, "application_state", None)
    if state is not None and getattr(state, "name", "") == "CONNECTING":
        accept = getattr(websocket, "accept", None)
        if accept is not None:
            await accept()


def _make_backend(config: WebSocketConfig, redis: Any) -> Backend:
    if redis is None and config.redis_url is None:
        return MemoryBackend()
    try:
        from stabilizer.backends.redis import RedisBackend
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "redis_url needs the redis extra: pip install 'fastapi-stabilizer[redis]'"
        ) from exc
    return RedisBackend.from_config(config, client=redis)


__all__ = ["Phase", "WebSocketConnectionManager"]
