"""Closing and release: take a connection out of service, close its socket, and have what
the node and the cluster know about it (presence, groups, session, hooks, events) settled
around that close (settlement.py), exactly once per connection."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from typing import Any, Protocol

from stabilizer.config import CloseCode
from stabilizer.connection.closer import close_within
from stabilizer.connection.connection import Connection, State
from stabilizer.connection.sockets import SocketLike, accept_if_needed, offers_subprotocol
from stabilizer.errors import ConnectionNotFoundError
from stabilizer.node.context import NodeContext
from stabilizer.pure.text import retry_advice, truncate_reason
from stabilizer.pure.v2 import SUBPROTOCOL
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.liveness import Liveness
from stabilizer.services.settlement import Settlement, Unregistered

logger = logging.getLogger(__name__)

#: The task that connected a client in this context: set by an admission in the task that
#: awaits it, inherited by the tasks it starts after (a receive loop in asyncio.gather or
#: create_task is still that handler's code).
_HANDLER: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "stabilizer_handler", default=None)


def shutdown_reason(code: int, jitter: float) -> str:
    """The close reason of a shutdown: retry advice when the node restarts."""
    if code == CloseCode.SERVICE_RESTART:
        return retry_advice(jitter)
    return "server shutting down"


def become_handler() -> asyncio.Task[Any] | None:
    """Make the current task the handler of what it connects (and of its later sub-tasks);
    return it, the connection's owner."""
    task = asyncio.current_task()
    _HANDLER.set(task)
    return task


def current_handler() -> asyncio.Task[Any] | None:
    """The handler the running code acts for: the task that connected a client in this
    context while that task runs (a task that outlives its handler acts for itself), else
    the current task."""
    handler = _HANDLER.get()
    if handler is not None and not handler.done():
        return handler
    return asyncio.current_task()


class Reader(Protocol):
    """What reads a connection's frames for the application (a session)."""

    async def caught_up(self) -> None:
        """Return once the application asked for the next frame (or asks for none)."""

    @property
    def reading(self) -> bool:
        """True while it waits for the client's next frame (the client's close included)."""


class Closing:
    """Every way a local connection ends goes through here."""

    def __init__(self, ctx: NodeContext, liveness: Liveness, membership: Membership,
                 settlement: Settlement) -> None:
        self._ctx = ctx
        self._liveness = liveness
        self._membership = membership  # hands a replaced connection's memberships over
        self._settlement = settlement
        self._slots = asyncio.Semaphore(ctx.config.max_concurrent_cleanup)
        # Handlers whose connection the node closed behind their back (replaced, timed out,
        # evicted): their later disconnect(client_id) must not close a newer socket.
        self._departed: weakref.WeakKeyDictionary[asyncio.Task[Any], set[str]] = (
            weakref.WeakKeyDictionary())
        # conn_id -> the session reading it (weakly: a session ends without telling)
        self._readers: weakref.WeakValueDictionary[str, Reader] = weakref.WeakValueDictionary()

    @property
    def slots(self) -> asyncio.Semaphore:
        """Bounds how many sockets close at once (max_concurrent_cleanup)."""
        return self._slots

    async def disconnect(self, client_id: str, code: int, reason: str) -> None:
        """The seed's disconnect(client_id): close this node's connection of the client,
        unless called from a handler whose connection was already closed by the node.

        Raises:
            ConnectionNotFoundError: no connection of `client_id` exists on this node.
        """
        handler = current_handler()
        gone = self._departed.get(handler) if handler is not None else None
        if gone is not None and client_id in gone:
            gone.discard(client_id)
            return
        conn = self._ctx.pool.get(client_id)
        if conn is None:
            raise ConnectionNotFoundError(f"client {client_id!r} is not connected to this node")
        await self.release(conn, code=code, reason=reason)

    def reads(self, conn: Connection, reader: Reader) -> None:
        """`reader` hands the frames of `conn` to the application (see read_out)."""
        self._readers[conn.conn_id] = reader

    async def read_out(self, conn: Connection, deadline: float) -> None:
        """Before a shutdown closes `conn`: wait, until the deadline or at most close_timeout,
        for its reader to have handed the application every frame the server received (the
        server drops what arrives once the close has gone out). A reader that goes on
        reading keeps handing over what comes meanwhile."""
        reader = self._readers.get(conn.conn_id)
        if reader is None:
            return
        loop = asyncio.get_running_loop()
        bound = min(deadline - loop.time(), self._ctx.config.close_timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(bound, 0.0)):
                await reader.caught_up()

    def readmitted(self, owner: asyncio.Task[Any] | None, client_id: str) -> None:
        """A handler task connected `client_id` again: its disconnect acts again."""
        if owner is not None and (gone := self._departed.get(owner)) is not None:
            gone.discard(client_id)

    async def release(self, conn: Connection, *, code: int = CloseCode.NORMAL,
                      reason: str = "normal closure", keep_session: bool | None = None,
                      client_code: int | None = None) -> bool:
        """Close `conn` (this exact socket) and drop its presence; False if already closed.

        With history, the session stays resumable for session_ttl unless `keep_session` is
        False (an explicit end; the default for a normal closure). `client_code`: the
        client closed first, with that code, which the log and on_disconnect report.
        """
        if not self.detach(conn):
            # the node is closing it already (replaced, timed out, shutting down): the
            # caller, typically the handler on its way out, waits for the close frame
            await conn.socket_closed()
            return False
        # the rest runs to its end even if the caller is cancelled: a detached connection
        # must be closed and settled, or its hooks never run and its groups keep it
        await asyncio.shield(self._ctx.tasks.spawn(
            self._close_and_settle(conn, code, reason, keep_session, client_code=client_code),
            name=f"stabilizer-close-{conn.conn_id}"))
        return True

    async def _close_and_settle(self, conn: Connection, code: int, reason: str,
                                keep_session: bool | None, *, unregister: bool = True,
                                client_code: int | None = None, afresh: bool = False) -> None:
        unregistered = Unregistered.KEPT
        try:
            async with self._slots:
                if unregister:
                    unregistered = await self.unregister(conn)
                await self.close_socket(conn, code, reason)
        finally:  # cancelled before the close: nobody may wait for a close that never comes
            conn.socket_done()
        await self.settle(conn, code, reason, keep_session, unregistered=unregistered,
                          client_code=client_code, afresh=afresh)

    def detach(self, conn: Connection, *, in_pool: bool = True) -> bool:
        """Synchronously take `conn` out of service; False if it already was."""
        if conn.state is not State.OPEN:
            return False
        conn.begin_close()
        if in_pool:
            self._ctx.pool.remove(conn)
        self._liveness.forget(conn)
        if conn.owner is not current_handler():
            self._departed_from(conn)  # closed behind its handler's back
        return True

    def _departed_from(self, conn: Connection) -> None:
        owner = conn.owner
        if owner is not None and not owner.done():
            self._departed.setdefault(owner, set()).add(conn.client_id)

    def retire(self, conn: Connection, code: int, reason: str, *, in_pool: bool = True,
               client_code: int | None = None, afresh: bool = False,
               unregister: bool = False) -> None:
        """The node closes `conn` (replaced, timed out, evicted, failed, its client gone):
        take it out of service now and close its socket in a task of the node. Its handler's
        later disconnect() of the client does nothing. `client_code`: the client closed
        first, with that code (its session stays resumable). `afresh`: replaced by a
        connection that began a fresh session (Settlement.settle). `unregister`: remove its
        presence even when replaced (the replacement may never have reached the store)."""
        if not self.detach(conn, in_pool=in_pool):
            return
        self._departed_from(conn)
        if code == CloseCode.REPLACED:
            self._ctx.stats.replaced += 1
            # what it joined or left through a node that still held it after the
            # replacement is the live socket's: hand the memberships over
            if conn.groups or conn.changed_groups:
                self._ctx.tasks.spawn(self._membership.hand_over(conn.client_id),
                                      name=f"stabilizer-hand-over-{conn.conn_id}")
        # a replaced connection's presence names the newer connection already, unless a
        # resync wrote it back after that: then removing it (if it still names this
        # socket) costs a round trip, which an ordinary takeover does not pay
        self._ctx.tasks.spawn(
            self._close_and_settle(conn, code, reason, True if client_code is not None else None,
                                   unregister=(unregister or code != CloseCode.REPLACED
                                               or conn.resynced),
                                   client_code=client_code, afresh=afresh),
            name=f"stabilizer-close-{conn.conn_id}")

    def on_conn_failed(self, conn: Connection, code: CloseCode, reason: str) -> None:
        """A connection's outbox overflowed or its socket failed (or a write found its
        client gone)."""
        if conn.client_gone:
            self._client_gone(conn, code)
            return
        logger.info("closing client %r (conn %s): %s", conn.client_id, conn.conn_id, reason)
        if code == CloseCode.TRY_AGAIN_LATER:
            self._ctx.stats.overflow_closes += 1
            reason = retry_advice(self._ctx.config.retry_jitter)
        self.retire(conn, code, reason)

    def _client_gone(self, conn: Connection, code: CloseCode) -> None:
        """A write found the client of a session's connection gone. A session waiting for
        the client's next frame gets the client's close next and releases the connection
        with it. Any other (a push-only handler, which never reads; one busy with a frame)
        may never read it: the connection is released now, with the close code the server
        received, rather than held until the heartbeat ends it."""
        reader = self._readers.get(conn.conn_id)
        if reader is None or not reader.reading:
            self.retire(conn, code, "client closed", client_code=conn.client_close_code)

    def on_timeout(self, conn: Connection) -> None:
        """A connection missed its heartbeat deadline."""
        self.retire(conn, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")

    def close_client(self, client_id: str, code: int, reason: str) -> None:
        """Close this node's connection of `client_id`, if any (a CLIENT_CLOSE envelope: an
        emitter's disconnect_client); with history, 1000 ends its session."""
        conn = self._ctx.pool.get(client_id)
        if conn is not None:
            logger.info("closing client %r on request (code %d)", client_id, code)
            self.retire(conn, code, reason)

    def kick(self, conn: Connection, *, afresh: bool = False) -> None:
        """Another node (or a resync) found a newer connection of this client (`afresh`:
        one that began a fresh session)."""
        self.retire(conn, CloseCode.REPLACED, "replaced by a connection on another node",
                    afresh=afresh)

    async def refuse(self, websocket: SocketLike, client_id: str | None, code: int,
                     reason: str) -> None:
        """Close a socket the node does not admit with `code` and `reason`, within
        close_timeout, accepting it first if nobody had (its client then reads them, not a
        failed handshake); a peer already gone is no error. A v2 client's socket is accepted
        with the v2 subprotocol: without it the client would take the refusal for a server
        that does not speak v2 and give up, whatever retry advice the close carries."""
        ctx = self._ctx
        ctx.stats.refused_connections += 1
        logger.info("refused client %r: %s (close %d)", client_id, reason, int(code))
        offered = offers_subprotocol(websocket, SUBPROTOCOL)
        try:
            await accept_if_needed(websocket, SUBPROTOCOL if offered else None)
        except Exception:
            logger.debug("refusal accept failed; peer gone", exc_info=True)
            return
        await close_within(websocket, int(code), truncate_reason(reason),
                           ctx.config.close_timeout)

    async def refuse_for_shutdown(self, websocket: SocketLike, client_id: str | None) -> None:
        """Refuse a socket because the node shuts down: the shutdown's code, with retry
        advice when the node restarts."""
        code = self._ctx.shutdown_code
        await self.refuse(websocket, client_id, code,
                          shutdown_reason(code, self._ctx.config.retry_jitter))

    # The steps of a close, in order: unregister, close_socket, settle (the shutdown runs
    # them itself, under its deadline; an admission that lost to it unregisters).

    async def unregister(self, conn: Connection) -> Unregistered:
        """Drop the presence of `conn` before its socket closes (Settlement.unregister)."""
        return await self._settlement.unregister(conn)

    async def close_socket(self, conn: Connection, code: int, reason: str,
                           timeout: float | None = None) -> bool:
        """Send a close frame within close_timeout (or `timeout`, if shorter), the TCP
        connection dropped if it cannot go out (connection/closer.py). False when the frame
        did not leave (aborted, the socket raised, or it waits behind unread data)."""
        bound = self._ctx.config.close_timeout
        try:
            return await close_within(conn.socket, int(code), truncate_reason(reason),
                                      bound if timeout is None else min(bound, timeout))
        finally:
            conn.socket_done()

    async def settle(self, conn: Connection, code: int, reason: str,
                     keep_session: bool | None, *,
                     unregistered: Unregistered = Unregistered.KEPT,
                     client_code: int | None = None, by: float | None = None,
                     afresh: bool = False) -> None:
        """Once the socket of `conn` is closed, settle its end with the store and the
        application, once (Settlement.settle)."""
        await self._settlement.settle(conn, code, reason, keep_session,
                                      unregistered=unregistered, client_code=client_code,
                                      by=by, afresh=afresh)
