"""The store's side of admitting a connection: before it enters the pool, what its client
had there before is settled. With history a fresh session opens, from where its streams
stood at the registration; without, the memberships an earlier connection left end (a
connection begins with no groups). A backend that cannot be reached degrades this (the
socket still works locally); a newer socket that opened the session first replaces it."""

from __future__ import annotations

import logging

from stabilizer.backends.base import Registration, SessionTaken
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import SESSION_ROUND_TRIPS, NodeContext

logger = logging.getLogger(__name__)

Baselines = dict[str, tuple[int, str]]


class Opening:
    """Settles a registered connection's past in the shared store."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._backend_log = RateLimitedLog(logger)

    async def settle(self, conn: Connection, resuming: bool,
                     registration: Registration | None) -> tuple[Baselines, bool]:
        """Settle what the client of `conn` had before (`registration`: None when it was
        not recorded); return the baselines of a fresh session's streams (with history),
        and True when a newer socket of the client took the session first (`conn` is
        replaced: its kick may be lost)."""
        history = self._ctx.config.history_enabled
        if history and not resuming:  # a fresh session: whatever the client had ends
            return await self._start_session(
                conn, None if registration is None else registration.positions)
        if registration is not None and not (history or registration.groups_ended):
            # without history a connection begins with no groups: a replaced connection's
            # end, as after a disconnect, or what a reaped node's late join wrote
            await self._end_memberships(conn)
        return {}, False

    async def _end_memberships(self, conn: Connection) -> None:
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.sessions.end(conn.client_id, conn_id=conn.conn_id,
                                                   opening=True),
                          round_trips=SESSION_ROUND_TRIPS)
        except BackendUnavailable as exc:
            self._backend_log.warning("earlier groups of %r not left (backend unavailable)",
                                      conn.client_id, exc=exc)

    async def _start_session(self, conn: Connection,
                             since: Baselines | None) -> tuple[Baselines, bool]:
        """Open a fresh session from where its streams stood at the registration (`since`;
        None when it was not recorded: from where they stand at the open)."""
        ctx = self._ctx
        try:
            baselines = await ctx.ask(ctx.backend.sessions.activate(
                conn.client_id, fresh=True, user_id=conn.user_id, conn_id=conn.conn_id,
                since=since), round_trips=SESSION_ROUND_TRIPS)
        except BackendUnavailable as exc:
            self._backend_log.warning("session of %r not opened (backend unavailable)",
                                      conn.client_id, exc=exc)
            return {}, False
        except SessionTaken:
            # a newer socket registered after this one and opened first: this one is
            # replaced, and must not end that socket's session
            logger.info("client %r (conn %s) was replaced before its session opened",
                        conn.client_id, conn.conn_id)
            return {}, True
        return baselines, False
