"""Users: every connection of an authenticated user, reached and closed cluster-wide.

A user's connections are distinct clients (tabs, devices) that share a ``user_id``. Sends
go through the router (live: local connections at once and one script for the other
nodes; history: one sequenced message on the user's stream); a disconnect closes the local
connections here and hands one USER_CLOSE envelope to every other node holding one. One
client is closed the same way, wherever it is: here, or by one CLIENT_CLOSE envelope routed
to the node that holds it (what an emitter's disconnect_client sends).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeAlias

from stabilizer.backends.base import Presence
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.text import check_close_code, is_usable_id
from stabilizer.pure.users import is_user_id
from stabilizer.pure.wire import Envelope, Kind, close_body, encode
from stabilizer.services.closing import Closing
from stabilizer.services.delivery.router import Router

logger = logging.getLogger(__name__)

#: Close the connections still being admitted (or entering) that match once admitted;
#: return their conn ids.
RetirePending: TypeAlias = Callable[[Callable[[Connection], bool], int, str], set[str]]


class Users:
    """Sends to, closes and lists the connections of users, cluster-wide."""

    def __init__(self, ctx: NodeContext, router: Router, closing: Closing,
                 retire_pending: RetirePending | None = None) -> None:
        self._ctx = ctx
        self._router = router
        self._closing = closing
        # the admission's: connections registered here and not yet admitted
        self._retire_pending = retire_pending
        self._backend_log = RateLimitedLog(logger)

    async def send(self, user_id: str, payload: str | bytes, value: object = None) -> int:
        """Deliver to every connection of `user_id`; return how many it reached."""
        if not is_user_id(user_id):
            return 0
        return len(await self._router.send_to_user(user_id, payload, value))

    async def disconnect(self, user_id: str, code: int, reason: str) -> int:
        """Close every connection of `user_id` on every node; return how many.

        Raises:
            ValueError: `code` cannot be sent.
        """
        check_close_code(code)
        if not is_user_id(user_id):
            return 0
        closed = self.close_local(user_id, code, reason)
        ctx = self._ctx
        if not ctx.backend.is_shared:
            return closed
        envelope = encode(Envelope(Kind.USER_CLOSE, ctx.node_id, user_id,
                                   close_body(code, reason)))
        try:
            route = await ctx.ask(ctx.backend.users.route(user_id, envelope))
            return closed + len(route.reached)
        except BackendUnavailable as exc:
            self._backend_log.warning("user %r disconnected on this node only: backend "
                                      "unavailable", user_id, exc=exc)
            return closed

    async def disconnect_client(self, client_id: str, code: int, reason: str) -> bool:
        """Close the connection of `client_id` on whichever node holds it; True if this
        node closed it or the node holding it received the request.

        Raises:
            ValueError: `code` cannot be sent.
            BackendUnavailable: the client is not here and the store cannot be reached.
        """
        check_close_code(code)
        if not is_usable_id(client_id, self._ctx.config.max_client_id_length):
            return False
        ctx = self._ctx
        if self.close_client_local(client_id, code, reason):
            return True
        if not ctx.backend.is_shared:
            return False
        envelope = encode(Envelope(Kind.CLIENT_CLOSE, ctx.node_id, client_id,
                                   close_body(code, reason)))
        return await ctx.ask(ctx.backend.routing.route(client_id, envelope))

    def close_local(self, user_id: str, code: int, reason: str) -> int:
        """Close this node's connections of `user_id` (a USER_CLOSE from another node too),
        those still being admitted included (closed once announced)."""
        held = (self._retire_pending(lambda conn: conn.user_id == user_id, code, reason)
                if self._retire_pending is not None else set())
        conns = [conn for conn in self._ctx.pool.of_user(user_id) if conn.conn_id not in held]
        for conn in conns:
            logger.info("closing client %r of user %r (code %d)", conn.client_id, user_id, code)
            self._closing.retire(conn, code, reason)
        return len(conns) + len(held)

    def close_client_local(self, client_id: str, code: int, reason: str,
                           conn_id: str | None = None) -> bool:
        """Close this node's connection of `client_id` (a CLIENT_CLOSE from another node
        too), or the one still being admitted (with `conn_id`, only the one it names); True
        if there was one."""
        def named(conn: Connection) -> bool:
            return conn.client_id == client_id and conn_id in (None, conn.conn_id)

        held = (self._retire_pending(named, code, reason)
                if self._retire_pending is not None else set())
        conn = self._ctx.pool.get(client_id)
        if conn is not None and named(conn) and conn.conn_id not in held:
            self._closing.close_client(client_id, code, reason)
            return True
        return bool(held)

    async def connections(self, user_id: str) -> list[Presence]:
        """Every connection of `user_id` on every node, oldest first.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not is_user_id(user_id):
            return []
        return await self._ctx.ask(self._ctx.backend.users.connections(user_id))

    async def count(self) -> int:
        """Users with a connection on any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.users.count())
