"""Admission: from an accepted socket to a registered connection, one client id at a time.

One client, one socket, under any interleaving. On this node, admissions of one client id
take turns, and a newer connection replaces the older one in the pool. Across nodes, the
backend's register step tells the previous owner node to close its socket (a KICK naming the
old conn id). That kick can arrive while the old connection is still being admitted on its
node (its register reply and the kick travel on different Redis connections): a connection
is therefore known by its conn id from before its register step, and a kick for it is kept
and carried out as soon as its admission completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from stabilizer.backends.base import Presence, Registration, Seat
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import SocketLike, accept_if_needed
from stabilizer.errors import (
    BackendUnavailable,
    ConfigError,
    ConnectionLimitExceededError,
    ShutdownError,
    UserConnectionLimitError,
)
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.rate import TokenBucket
from stabilizer.pure.text import check_client_id
from stabilizer.pure.wire import Envelope
from stabilizer.services.closing import Closing, become_handler
from stabilizer.services.delivery.router import Router
from stabilizer.services.events import Events
from stabilizer.services.liveness import Liveness
from stabilizer.services.memory import MemoryGuard
from stabilizer.services.opening import Opening

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Seated:
    """Who a connection is for, beyond its client id: the authenticated user (None when
    anonymous), that user's public info as compact JSON, and the protocol version."""

    user_id: str | None = None
    info: str = ""
    protocol: int = 1


ANONYMOUS: Final = Seated()  # an anonymous plain client
_REPLACED: Final = (int(CloseCode.REPLACED), "replaced by a connection on another node")
#: A pending connection's close once admitted: (code, reason, True when replaced by a
#: connection that began a fresh session: Closing.retire's `afresh`).
Retired = tuple[int, str, bool]
_MAX_DEFERRED: Final = 64  # MEMBERSHIP envelopes kept per client being admitted
#: What ends an admission with nothing of it left in the store: a registration refused, or
#: a settle that unregistered it (a shutdown began meanwhile).
_NOT_RECORDED: Final = (ConnectionLimitExceededError, UserConnectionLimitError, ConfigError,
                        ShutdownError)
#: Send a fresh session's connection what its node delivered of its streams after where
#: each began, then release its held frames (Resume.catch_up).
CatchUp = Callable[[Connection, dict[str, tuple[int, str]]], Awaitable[None]]


class Admission:
    """Admits connections and carries out kicks from other nodes."""

    def __init__(self, ctx: NodeContext, closing: Closing, liveness: Liveness,
                 memory: MemoryGuard, events: Events, router: Router,
                 ensure_started: Callable[[], Awaitable[None]],
                 apply_membership: Callable[[Envelope], None] | None = None,
                 catch_up: CatchUp | None = None) -> None:
        self._ctx = ctx
        self._catch_up = catch_up
        self._apply_membership = apply_membership
        self._closing = closing
        self._on_fail = closing.on_conn_failed  # one bound method, shared by every connection
        self._liveness = liveness
        self._memory = memory
        self._events = events
        self._router = router
        self._opening = Opening(ctx)
        self._ensure_started = ensure_started
        # client id -> None while one admission of it runs, or the future it resolves when
        # it ends once another admission of the same id waits for it
        self._turns: dict[str, asyncio.Future[None] | None] = {}
        self._pending: dict[str, Connection] = {}  # by conn id, until admitted or refused
        # pending conn ids closed meanwhile (replaced on another node, or a disconnect of
        # their client or user), with the close they get once admitted
        self._retired: dict[str, Retired] = {}
        # conn ids in the pool whose admission has not announced them yet (a fresh
        # session's catch-up, the connect hooks): a kick of one is kept like a pending one's
        self._entering: dict[str, Connection] = {}
        # client id -> MEMBERSHIP envelopes that came while it had no connection in the pool
        # and one being admitted: acted on once that admission ends
        self._deferred: dict[str, list[Envelope]] = {}
        self._backend_log = RateLimitedLog(logger)

    async def admit(self, client_id: str, websocket: SocketLike,
                    metadata: dict[str, Any] | None = None, *,
                    resuming: bool = False, user: Seated | None = None,
                    welcome: Callable[[Connection], None] | None = None,
                    reads_close: bool = False) -> Connection:
        """Register an (accepted, or accepted here) socket for `client_id`; any earlier
        connection of the client, on any node, is closed with REPLACED (4500).

        With history and `resuming`, live frames are held until the resume replay ends.
        With `user`, the connection is one of that user's (within max_connections_per_user
        across the cluster). `welcome` offers the connection its first frame just before it
        joins the pool, ahead of anything sent to it there (the connect hooks' sends).
        `reads_close`: the caller reads the client's close and releases the connection
        with it (a session), so a write that finds the client gone leaves the release to it.

        Raises:
            InvalidClientIdError: the id is empty, too long or not text.
            UserConnectionLimitError: the user holds max_connections_per_user already.
            ConnectionLimitExceededError: max_connections or max_cluster_connections reached.
            MemoryLimitExceededError: the metadata or the node would exceed a memory limit.
            ShutdownError: the node is shutting down.
        """
        ctx = self._ctx
        check_client_id(client_id, ctx.config.max_client_id_length)
        if not ctx.is_accepting:
            raise ShutdownError("node is shutting down; connect to another node")
        if not ctx.started:  # the application did not start the manager (yet)
            await self._ensure_started()
        await accept_if_needed(websocket)
        if client_id in self._turns:  # another admission of this client id: wait for its end
            await self._wait_turn(client_id)
        self._turns[client_id] = None
        try:
            conn = self._pending_connection(client_id, websocket, metadata, resuming,
                                            user or ANONYMOUS, reads_close)
            try:
                try:
                    # awaited here, in no helper of its own: while a reconnect storm's
                    # registrations wait for their batch, each keeps as few frames alive
                    # as it can (each one more for the cyclic collector to walk)
                    registration: Registration | None = await self._registering(
                        conn, resuming)
                except BackendUnavailable as exc:
                    registration = None
                    self._unrecorded(conn, exc)
                else:
                    conn.mark_registered()
                baselines = await self._settle(conn, resuming, registration)
            except _NOT_RECORDED:  # refused (nothing recorded), or unregistered already
                self._retired.pop(conn.conn_id, None)
                raise
            except BaseException:  # cancelled (or failed) before it entered the pool
                self._retired.pop(conn.conn_id, None)
                self._abandon(conn)
                self._orphaned(conn, resuming)
                raise
            finally:
                del self._pending[conn.conn_id]
            return await self._enter(conn, resuming, baselines, welcome)
        finally:
            turn = self._turns.pop(client_id)
            if turn is not None:
                turn.set_result(None)
            deferred = self._deferred.pop(client_id, None)
            if deferred and self._apply_membership is not None:
                for envelope in deferred:  # (with no connection admitted they go unused)
                    self._apply_membership(envelope)

    async def connect(self, client_id: str, websocket: SocketLike,
                      metadata: dict[str, Any] | None = None) -> None:
        """admit() for the seed's connect(): refused because the node shuts down, the socket
        is closed first, with the shutdown's code and retry advice as session() closes it
        (the caller only sees the error: its client would get no code, nor the advice).

        Raises:
            ShutdownError: the node is shutting down; and whatever admit() raises.
        """
        try:
            await self.admit(client_id, websocket, metadata)
        except ShutdownError:
            await self._closing.refuse_for_shutdown(websocket, client_id)
            raise

    async def _wait_turn(self, client_id: str) -> None:
        turns = self._turns
        while client_id in turns:
            turn = turns[client_id]
            if turn is None:  # the first to wait makes the future the end resolves
                turn = turns[client_id] = asyncio.get_running_loop().create_future()
            await asyncio.shield(turn)

    def _pending_connection(self, client_id: str, websocket: SocketLike,
                            metadata: dict[str, Any] | None, resuming: bool,
                            user: Seated, reads_close: bool) -> Connection:
        """A connection for `client_id`, known by its conn id until admitted or refused."""
        ctx = self._ctx
        conn = Connection(client_id, websocket, ctx.limits, self._on_fail,
                          metadata=metadata, owner=become_handler(),
                          hold=ctx.config.history_enabled,
                          user_id=user.user_id, info=user.info, protocol=user.protocol,
                          reads_close=reads_close, rate=TokenBucket.from_config(ctx.config))
        self._memory.admit(conn, len(self._pending))
        self._pending[conn.conn_id] = conn
        return conn

    def _abandon(self, conn: Connection) -> None:
        """Remove whatever presence the registration of `conn`, whose admission will not
        end, may have recorded: nothing else would while the node lives (a resync prunes
        stale entries, and none is due). Also when the registration looked unanswered:
        its answer may have come in the same loop pass as the cancellation. (The removal
        names the conn id: a newer connection of the client is left alone.) One answered
        after its caller gave up is removed by this too, once answered (`abandoned`)."""
        self._ctx.tasks.spawn(self._closing.unregister(conn),
                              name="stabilizer-unregister-abandoned")

    def _orphaned(self, conn: Connection, resuming: bool) -> None:
        """`conn` will not enter, and its presence goes with it: close the older open
        connection of its client on this node as replaced, as a KICK would on another node.
        The registration of `conn` took the client's presence and seat from it, and no
        resync gives them back, so it would stay open with neither."""
        older = self._ctx.pool.get(conn.client_id)
        if older is not None and older is not conn and older.is_open:
            self._closing.retire(older, CloseCode.REPLACED, "replaced by a newer connection",
                                 afresh=self._afresh(resuming), unregister=True)

    def _unrecorded(self, conn: Connection, exc: BackendUnavailable) -> None:
        """Degrade: the socket works locally; presence is registered again at the resync."""
        self._ctx.want_resync()
        self._backend_log.warning("presence of %r not registered (backend unavailable); "
                                  "will re-register", conn.client_id, exc=exc)

    async def _settle(self, conn: Connection, resuming: bool,
                      registration: Registration | None) -> dict[str, tuple[int, str]]:
        """Settle what the client had before in the shared store; return the baselines of
        a fresh session's streams (with history)."""
        baselines, taken = await self._opening.settle(conn, resuming, registration)
        if taken:  # a newer socket opened the session first: closed once admitted
            self._retired[conn.conn_id] = (*_REPLACED, False)
        if not self._ctx.is_accepting:  # shutdown began while we waited on the backend
            await self._closing.unregister(conn)
            self._orphaned(conn, resuming)
            raise ShutdownError("node is shutting down; connect to another node")
        return baselines

    async def _enter(self, conn: Connection, resuming: bool,
                     baselines: dict[str, tuple[int, str]],
                     welcome: Callable[[Connection], None] | None) -> Connection:
        """Put a recorded connection in the pool and announce it; one closed meanwhile (a
        disconnect on this node, a failed send of its catch-up) is returned closed, not
        watched and never announced: its close has run the disconnect hooks already.
        One closed before it joins the pool (the welcome's send found its client gone, and
        closed and settled it) never joins it, as no later close would take it out again;
        the older connection it replaces is closed all the same."""
        ctx = self._ctx
        if welcome is not None:
            welcome(conn)
        replaced = ctx.pool.put(conn)  # (adds no closed connection, replaces all the same)
        if replaced is not None:
            self._closing.retire(replaced, CloseCode.REPLACED, "replaced by a newer connection",
                                 in_pool=False, afresh=self._afresh(resuming))
        if not conn.is_open:  # (a kick kept for it has nothing left to close)
            self._retired.pop(conn.conn_id, None)
            return conn
        for stream, (offset, epoch) in baselines.items():
            # the node follows the client's streams from where its session begins, so that
            # a catch-up after a lost subscription covers them (its forget() unfollows them)
            self._router.follow(stream, offset, epoch)
        # in the pool, and not announced until the awaits below end: a kick waits for them
        self._entering[conn.conn_id] = conn
        try:
            if not resuming and conn.holding:  # (a resume's replay releases it)
                await self._caught_up(conn, baselines)
            if conn.is_open:
                await self._announce(conn, resuming)
        except BaseException:  # cancelled during the hooks: never leave it in the pool
            self._retired.pop(conn.conn_id, None)
            await self._closing.release(conn, code=CloseCode.INTERNAL_ERROR,
                                        reason="server error")
            raise
        finally:
            self._entering.pop(conn.conn_id, None)
        retired = self._retired.pop(conn.conn_id, None)
        if retired is not None and conn.is_open:
            code, reason, afresh = retired
            logger.info("client %r (conn %s) was closed (code %d) while admitted here",
                        conn.client_id, conn.conn_id, code)
            self._closing.retire(conn, code, reason, afresh=afresh)
        return conn

    async def _announce(self, conn: Connection, resuming: bool) -> None:
        """Watch an entered connection's heartbeat, count it and run its connect hooks."""
        ctx = self._ctx
        self._closing.readmitted(conn.owner, conn.client_id)
        self._liveness.track(conn)
        ctx.stats.connects += 1
        logger.info("client %r connected (conn %s, node %s)", conn.client_id,
                    conn.conn_id, ctx.node_id)
        if self._events.follows_connects:
            await self._events.connected(conn, resumed=resuming)

    async def _caught_up(self, conn: Connection,
                         baselines: dict[str, tuple[int, str]]) -> None:
        """A fresh session with history: its node's listener, which never waits for the
        register's reply, may have delivered messages of the session's streams past where
        it began while the connection was not in the pool yet. Send it those (held live
        frames wait), then let live frames through."""
        missed = {stream: base for stream, base in baselines.items()
                  if self._router.delivered_after(stream, *base)}
        if missed and self._catch_up is not None:
            await self._catch_up(conn, missed)
        else:
            conn.release_held({}, time.monotonic())

    def connections(self) -> list[Connection]:
        """Every local connection: in the pool, and still being admitted (after those)."""
        return [*self._ctx.pool.connections(), *self._pending.values()]

    def defer_membership(self, envelope: Envelope) -> bool:
        """Keep a MEMBERSHIP envelope for a client that has no connection in the pool but
        one being admitted (registered already, so another node may have written a join
        for it), to act on when the admission ends; False when it is not such a client."""
        client_id = envelope.target
        if (client_id is None or client_id not in self._turns
                or self._ctx.pool.get(client_id) is not None):
            return False
        deferred = self._deferred.setdefault(client_id, [])
        if len(deferred) < _MAX_DEFERRED:
            deferred.append(envelope)
        else:  # a flood: the settle reconciles the client from what the backend lists
            self._ctx.want_resync()
        return True

    def retire_pending(self, match: Callable[[Connection], bool], code: int,
                       reason: str) -> set[str]:
        """Close the connections still being admitted that `match` (a disconnect of their
        client or user) as soon as each admission completes; return their conn ids. Those
        registered already are what the rest of the cluster sees: a disconnect that skipped
        them would report them closed and leave them open. Those entering (in the pool) are
        closed once announced, as a kick of one is: their disconnect hooks and events
        follow their connect ones."""
        doomed = [conn for conn in (*self._pending.values(), *self._entering.values())
                  if match(conn)]
        for conn in doomed:
            self._retired.setdefault(conn.conn_id, (code, reason, False))
        return {conn.conn_id for conn in doomed}

    def kick(self, client_id: str, conn_id: str | None, afresh: bool = False) -> None:
        """Another node registered `client_id`: close our connection `conn_id` of it, now
        or as soon as its admission completes (it may be in the pool already, catching up
        or running its connect hooks: it is announced connected first). `afresh`: the
        newer connection began a fresh session (the KICK said so)."""
        pending = self._pending.get(conn_id) if conn_id is not None else None
        if pending is not None and pending.client_id == client_id:
            self._retired[pending.conn_id] = (*_REPLACED, afresh)
            return
        conn = self._ctx.pool.get(client_id)
        if conn is None or conn_id not in (None, conn.conn_id):
            return
        if conn.conn_id in self._entering:  # carried out once announced, as a pending one's
            self._retired[conn.conn_id] = (*_REPLACED, afresh)
        else:
            self._closing.kick(conn, afresh=afresh)

    def _registering(self, conn: Connection, resuming: bool) -> Awaitable[Registration]:
        """The backend's register call for `conn` (without history, a connection begins with
        no groups: whatever its client's set lists ends; with history, a fresh session's
        streams are read in the same step: its promise begins where they stood then, and
        not at its open, a round trip later, so that what is sent to the client once it is
        routable is owed to it). (Awaited by the caller: no frame of its own stays alive
        while the call waits in a batch.)"""
        ctx = self._ctx
        presence = Presence(conn.client_id, ctx.node_id, conn.conn_id, conn.created_at,
                            conn.user_id)
        seat = (Seat(conn.info, ctx.config.max_connections_per_user)
                if conn.user_id is not None else None)
        # no ctx.ask(): register() is bounded by the backend itself (Presence.register),
        # and a connect is cheaper without a timer of its own
        history = ctx.config.history_enabled
        return ctx.backend.presence.register(
            presence, max_cluster=ctx.config.max_cluster_connections,
            end_groups=not history, seat=seat, baselines=history and not resuming,
            fresh=self._afresh(resuming), abandoned=partial(self._abandon, conn))

    def _afresh(self, resuming: bool) -> bool:
        """Whether a connection admitted so begins afresh: no replay of the session it
        replaces carries what the replaced socket awaits to its client again."""
        return not (resuming and self._ctx.config.history_enabled)
