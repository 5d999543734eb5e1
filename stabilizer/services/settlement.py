"""Settlement: what the store and the application are told of a connection that ends,
exactly once: its presence goes before its socket closes (with its groups, where the store
can end them in the same step), then its groups, its session, the acknowledgements it
awaited, the disconnect hooks and events. closing.py decides when a connection ends and
closes its socket; it runs the two steps here around that close."""

from __future__ import annotations

import asyncio
import enum
import logging

from stabilizer.backends.base import ORPHAN_GRACE_TTLS
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import SESSION_ROUND_TRIPS, NodeContext
from stabilizer.pure.streams import begun_since, client_stream, user_stream
from stabilizer.services.delivery.fanout import FanOut
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.events import Events

logger = logging.getLogger(__name__)


class Unregistered(enum.Enum):
    """What a close's unregister did with the client's presence."""

    KEPT = "kept"  # it named another socket, was gone already, or the backend did not answer
    REMOVED = "removed"  # removed (or maybe: reply lost); the groups are the settle's to end
    WITH_GROUPS = "with groups"  # removed, and the client's groups ended in the same step


class Settlement:
    """Settles a local connection's end with the store and the application."""

    def __init__(self, ctx: NodeContext, membership: Membership, events: Events,
                 fanout: FanOut) -> None:
        self._ctx = ctx
        self._membership = membership
        self._events = events
        self._fanout = fanout  # tells the senders of the tokens an ended connection awaited
        self._backend_log = RateLimitedLog(logger)

    async def unregister(self, conn: Connection) -> Unregistered:
        """Drop the presence of `conn` (if it still names this socket). Without history the
        client's memberships end in the same step where the store can: a join another node
        wrote while this socket was closing (it found the client still present) ends with
        it, though this socket never had that group. Where it cannot (presence and the
        group sets in different slots), the settle ends them after (REMOVED). With history
        the client goes on the away list in the same step (one presence bucket): a node
        that dies before the settle suspends or ends the session leaves it to the sweep."""
        ctx = self._ctx
        if not ctx.backend.available:
            ctx.want_resync()
            return Unregistered.KEPT
        presence = ctx.backend.presence
        history = ctx.config.history_enabled
        end_groups = not history and presence.ends_groups
        try:
            # no ctx.ask(): unregister() is bounded by the backend itself, and its bound
            # allows for the batch in flight before its own, which a timer here did not
            removed = await presence.unregister(
                conn.client_id, conn.conn_id, end_groups=end_groups,
                away=self._away_for(conn))
        except BackendUnavailable as exc:
            ctx.want_resync()
            self._backend_log.warning("presence of %r not removed (backend unavailable)",
                                      conn.client_id, exc=exc)
            # it may have run (its reply lost), after which no resync prunes the presence
            # and ends the groups: where the unregister could not end them, the settle does
            return Unregistered.KEPT if history or end_groups else Unregistered.REMOVED
        if not removed:
            return Unregistered.KEPT
        return Unregistered.WITH_GROUPS if end_groups else Unregistered.REMOVED

    def _away_for(self, conn: Connection) -> float:
        """How long the client goes on the away list before its presence is removed (0: not
        at all). With history, the session's time to resume. Without, where the removal
        cannot end the client's groups in its own step (presence and the group sets apart),
        a client that may have groups is claimed for the orphan grace, the time a store
        gives a client it does not know: if this node dies before the settle ends them,
        the sweep does (the settle's end takes the claim off the list). One that left all
        its groups is not: its settle would find none, and the claim would wait for the
        sweep."""
        config = self._ctx.config
        if config.history_enabled:
            return config.session_ttl
        if self._ctx.backend.presence.ends_groups:
            return 0.0
        return ORPHAN_GRACE_TTLS * config.node_ttl if self._membership.may_list(conn) else 0.0

    async def settle(self, conn: Connection, code: int, reason: str,
                     keep_session: bool | None, *,
                     unregistered: Unregistered = Unregistered.KEPT,
                     client_code: int | None = None, by: float | None = None,
                     afresh: bool = False) -> None:
        """Bookkeeping once a socket is closed: groups, session, hooks, events (once).
        `unregistered`: what the close's unregister did (it may have ended the client's
        memberships already). `client_code`: the client closed first, with that code (what
        the log and the hooks report; `code` is what the server closed with). `by` (the
        loop's clock; a shutdown's deadline): the store's part stops then, unfinished (as
        when the store cannot be reached), and the hooks run all the same. `afresh`: it
        was replaced by a connection that began a fresh session (not a resume): with
        history too, no replay carries the tokens it awaited to the client again."""
        conn.finish_close()
        self._ctx.stats.disconnects += 1
        reported, said = (code, reason) if client_code is None else (client_code,
                                                                     "client closed")
        logger.info("client %r disconnected (conn %s, code %d)", conn.client_id, conn.conn_id,
                    reported)
        try:
            async with asyncio.timeout_at(by):
                await self._bookkeeping(conn, code, keep_session, unregistered, afresh)
        except TimeoutError:  # (only a shutdown sets `by`)
            self._backend_log.warning("bookkeeping of %r unfinished at the shutdown's "
                                      "deadline", conn.client_id)
        await self._events.disconnected(conn, reported, said,
                                        replaced=code == CloseCode.REPLACED)

    async def _bookkeeping(self, conn: Connection, code: int, keep_session: bool | None,
                           unregistered: Unregistered, afresh: bool) -> None:
        """The store's part of a close: the client's groups and session."""
        # a join or leave in flight finishes first: its backend write must not land after
        # the session's end (the client would stay a member for good)
        async with self._membership.turn(conn.client_id):
            # with a doubt (a MEMBERSHIP envelope lost with the subscription), the backend
            # may list groups this node never applied: leave them there all the same; so
            # for a join that wrote the backend but found the socket closing (it lists a
            # group only once its node follows it). Where the unregister could not end the
            # client's groups in its own step, the end reads the client's group set after
            # it, even for a socket that had none: a join another node wrote meanwhile (it
            # found the client present) is ended here, and one it wrote after finds the
            # presence gone (it reads it after its write) and goes on the away list
            changed = bool(conn.groups) or conn.changed_groups
            had_groups = unregistered is not Unregistered.WITH_GROUPS and (
                changed or self._membership.in_doubt or unregistered is Unregistered.REMOVED)
            await self._membership.forget(conn)
            # a newer socket of the client admitted here while this one was closing owns the
            # session now (a fresh one ended this socket's groups already): ending it would
            # end what the newer socket joined, as a replacement's would
            newer = self._ctx.pool.get(conn.client_id) not in (None, conn)
            # without history nothing carries its tokens again; with, a replay to the
            # session does (to a newer socket too), unless this socket held it and ended it,
            # or a newer socket began a fresh session instead of resuming it (it replays
            # nothing from before it began)
            ended = not self._ctx.config.history_enabled or afresh
            if code != CloseCode.REPLACED and not newer:
                closed = await self._settle_session(conn, code, keep_session, had_groups)
                ended = ended or (closed and unregistered is not Unregistered.KEPT)
        if code == CloseCode.REPLACED and not ended:
            ended = await self._session_replaced(conn)
        if ended:  # the acknowledgements it awaits will not come: their sends fail now
            self._fanout.ended(conn)
        if changed and unregistered is Unregistered.KEPT and code != CloseCode.REPLACED:
            # the store named another connection of the client (one this socket was never
            # told of: it was admitted while the store was unreachable): what this socket
            # joined or left is the live one's, wherever it is (a replaced one: Closing.retire())
            await self._membership.hand_over(conn.client_id)

    async def _session_replaced(self, conn: Connection) -> bool:
        """Whether the session a replaced `conn` held is gone from the store, or a session
        that began after what `conn` was sent took its place (its client came back afresh),
        so that no replay carries the ack tokens `conn` awaits again. Its replacement said
        nothing of how it began: a resync found it, or the KICK saying so was lost. Asked
        only while `conn` awaits some (an ordinary replacement costs no round trip); a store
        that does not answer leaves them to their timeouts."""
        streams = [client_stream(conn.client_id)]
        if conn.user_id is not None:
            streams.append(user_stream(conn.user_id))
        held = conn.acked_positions(streams)  # (its acknowledged sends come on these)
        if held is None:
            return False
        ctx = self._ctx
        try:
            state = await ctx.ask(ctx.backend.sessions.load(conn.client_id))
        except BackendUnavailable:
            return False
        return state is None or begun_since(state.baselines, held)

    async def _settle_session(self, conn: Connection, code: int, keep_session: bool | None,
                              had_groups: bool) -> bool:
        """Suspend or end the client's session; True if it ended one (with history)."""
        ctx = self._ctx
        history = ctx.config.history_enabled
        if keep_session is None:
            keep_session = code != CloseCode.NORMAL
        sessions = ctx.backend.sessions
        try:
            # (a newer socket of the client on another node owns the session: left alone)
            if history and keep_session:
                await ctx.ask(sessions.suspend(conn.client_id, ctx.config.session_ttl,
                                               conn_id=conn.conn_id),
                              round_trips=SESSION_ROUND_TRIPS)
            elif history or had_groups:
                await ctx.ask(sessions.end(conn.client_id, conn_id=conn.conn_id),
                              round_trips=SESSION_ROUND_TRIPS)
                return history
        except BackendUnavailable as exc:
            # maintenance puts it on the away list once the backend answers: the sweep then
            # ends it (and its groups) unless the client came back meanwhile
            ctx.unsettled(conn.client_id,
                          ctx.config.session_ttl if history and keep_session else 0.0)
            self._backend_log.warning("session of %r not settled (backend unavailable); "
                                      "maintenance settles it later", conn.client_id, exc=exc)
        return False  # (unsettled: the client may still resume it before the sweep)
