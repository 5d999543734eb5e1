"""What a session does with a client's text frames before the application sees them:
heartbeats, and for v2 clients the envelope of every frame (``message``, ``ping``,
``pong``, ``refresh``, ``ack``, and the requests that get a ``reply``: ``rpc``,
``subscribe``, ``unsubscribe``, ``publish``); also the first frame the server sends.

A v2 frame that is not what docs/protocol.md describes gets an ``error`` frame and is
dropped; the connection stays open.

Under an inbound rate limit every frame counts but a pong answering a ping, one client
heartbeat per heartbeat_interval and an ``ack`` the connection awaits (docs/protocol.md
section 3): past the limit a message gets a ``rate_limited`` error frame, a request a
``rate_limited`` reply, other frames are dropped without an answer, and with action close a
message, heartbeat or ack closes the connection with 1013.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from stabilizer.auth.identity import Credentials
from stabilizer.config import CloseCode, RateLimitAction
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import AuthenticationError, BackendUnavailable, CredentialsExpiredError
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import (
    PONG,
    PONG_FRAME,
    control_type,
    error_frame,
    rate_limited_frame,
    refreshed_frame,
    session_frame,
)
from stabilizer.pure.rate import TokenBucket, over_rate_reason
from stabilizer.pure.v2 import ProtocolError, client_frame, message_data, refresh_token
from stabilizer.session.calls import REQUESTS, Calls

if TYPE_CHECKING:
    from stabilizer.session.handshake import Greeting
    from stabilizer.session.session import Session, SessionServices

#: what the rate limit made of a frame: pass it on, drop it, or the connection was closed
Verdict = Literal["pass", "drop", "closed"]


def welcome_frame(ctx: NodeContext, conn: Connection, greeting: Greeting, *, resumed: bool,
                  token: str | None) -> str:
    """The ``session`` frame of a new connection (with the v2 fields for a v2 client)."""
    identity = greeting.identity
    v2 = None
    if greeting.protocol >= 2:
        v2 = {"protocol": 2, "device": greeting.device,
              "user_id": identity.user_id if identity else None,
              "expires_at": identity.expires_at if identity else None,
              # (a resuming client keeps its connect frame under it: docs/protocol.md 6.2)
              "max_message_size": ctx.config.max_message_size}
    return session_frame(
        client_id=conn.client_id, conn_id=conn.conn_id, node_id=ctx.node_id, resumed=resumed,
        token=token, heartbeat_interval=ctx.config.heartbeat_interval,
        history=ctx.config.history_enabled, v2=v2)


class Inbound:
    """Sorts one session's text frames into control frames and application text."""

    def __init__(self, services: SessionServices) -> None:
        self._services = services
        self._calls: Calls | None = None  # made at the first request (v2 clients only)

    async def text(self, session: Session, conn: Connection, text: str) -> str | None:
        """Handle a control frame (None) or return the application's text.

        The session is an argument, not an attribute: holding it would make a reference
        cycle, and every closed session's objects would wait for the cyclic collector.
        """
        if conn.protocol < 2:
            control = control_type(text)
            if control is None:
                return text
            if (rate := conn.rate) is None or await self._beat_within(conn, rate, control):
                self._heartbeat(conn, control)
            return None
        if text == PONG:
            if (rate := conn.rate) is None or await self._beat_within(conn, rate, PONG):
                self._heartbeat(conn, PONG)
            return None
        try:
            kind, body = client_frame(text)
            if kind == "message":
                return message_data(body)
        except ProtocolError as exc:
            self._junk(conn, "bad_frame", str(exc))
            return None
        if kind in ("ping", "pong"):
            if (rate := conn.rate) is None or await self._beat_within(conn, rate, kind):
                self._heartbeat(conn, kind)
        elif kind in REQUESTS:
            calls = self._calls
            if calls is None:
                services = self._services
                calls = self._calls = Calls(services.ctx, services.procedures,
                                            services.channels)
            calls.start(conn, kind, body)
        elif kind == "ack":
            # a token it awaits is free; any other (not sent, acknowledged already) does
            # nothing, and counts against the rate limit
            rate = conn.rate
            if (not self._services.acks.acked(conn, body.get("id")) and rate is not None
                    and not rate.take(time.monotonic())):
                await self._drop(conn)
        elif kind == "refresh":
            await self._refresh(session, conn, body.get("token"))
        else:
            self._junk(conn, "unknown_type", f"unknown frame type {kind[:40]!r}")
        return None

    def cancel_calls(self) -> None:
        """Cancel the client's running requests (its socket is gone)."""
        if self._calls is not None:
            self._calls.cancel()

    async def message_within_rate(self, conn: Connection) -> Verdict:
        """Apply the inbound rate limit to one application message."""
        rate = conn.rate
        if rate is None or rate.take(time.monotonic()):
            return "pass"
        return await self._over_rate(conn, notify=True)

    async def _beat_within(self, conn: Connection, rate: TokenBucket, control: str) -> bool:
        """True when a heartbeat is within the rate limit (free, or it spent a token)."""
        now = time.monotonic()
        if rate.take_pong(now) if control == PONG else rate.take_beat(now):
            return True
        await self._drop(conn)
        return False

    async def _drop(self, conn: Connection) -> None:
        """A heartbeat or ack over the rate limit: dropped without an answer, or with
        action close the connection is closed. On a connection the node is closing already
        (for this limit: the server hands on the pongs it reads after that) it is only
        dropped, uncounted: the limit has nothing left to do."""
        if conn.is_open:
            await self._over_rate(conn, notify=False)

    async def _over_rate(self, conn: Connection, *, notify: bool) -> Verdict:
        """Count a frame over the rate limit, then close the connection (action close) or
        drop the frame (telling the client with a ``rate_limited`` error frame if
        `notify`: an application message)."""
        ctx = self._services.ctx
        ctx.stats.rate_limited += 1
        config = ctx.config
        if config.rate_limit_action is RateLimitAction.CLOSE:
            # come back later (1013, after at least a window): the session stays resumable
            await self._services.closing.release(conn, code=CloseCode.TRY_AGAIN_LATER,
                                                 reason=over_rate_reason(config))
            return "closed"
        if notify:
            detail = (f"over {config.rate_limit_messages} messages per "
                      f"{config.rate_limit_window:g}s")
            conn.offer(Frame.text(rate_limited_frame(detail)), time.monotonic())
        return "drop"

    def _heartbeat(self, conn: Connection, control: str) -> None:
        if control == PONG:
            self._services.ctx.stats.pongs += 1
        else:  # a ping from the client
            conn.offer(Frame.text(PONG_FRAME), time.monotonic())

    def _junk(self, conn: Connection, code: str, detail: str) -> None:
        """A frame the protocol does not describe, or a refresh refused at once, counts
        against the rate limit like a message: answered with an error frame within it,
        dropped without one past it (a client cannot make the node parse and answer faster
        than the limit allows; requests are counted in Calls.start)."""
        rate = conn.rate
        if rate is not None and not rate.take(time.monotonic()):
            self._services.ctx.stats.rate_limited += 1
            return
        self._error(conn, code, detail)

    def _error(self, conn: Connection, code: str, detail: str) -> None:
        conn.offer(Frame.text(error_frame(code, detail)), time.monotonic())

    async def _refresh(self, session: Session, conn: Connection, token: object) -> None:
        services = self._services
        # (a refresh refused at once counts against the rate limit, as a malformed frame)
        if not services.auth.enabled:
            self._junk(conn, "refresh_unsupported", "this server has no authenticator")
            return
        try:
            fresh = refresh_token({"token": token})
        except ProtocolError as exc:
            self._junk(conn, "bad_frame", str(exc))
            return
        if not session.take_refresh():  # each check costs the authenticator's work
            spacing = services.ctx.config.auth_refresh_grace / 2
            self._junk(conn, "refresh_too_soon", f"one refresh per {spacing:g}s unless asked; "
                       "send it when the server sends refresh")
            return
        credentials = Credentials(fresh, session.websocket, refreshing=True)
        try:
            identity = await services.auth.refresh(conn, credentials)
        except CredentialsExpiredError:
            await services.closing.release(conn, code=CloseCode.AUTH_EXPIRED,
                                           reason="credentials expired")
            return
        except AuthenticationError as exc:
            await services.closing.release(conn, code=CloseCode.AUTH_FAILED, reason=str(exc))
            return
        except BackendUnavailable as exc:  # not the client's fault: asked again later
            self._error(conn, "refresh_failed", str(exc))
            session.refresh_unchecked()
            return
        session.refreshed(identity)
        await services.auth.reseat(conn, identity)  # listed before the client hears of it
        conn.offer(Frame.text(refreshed_frame(identity.expires_at)), time.monotonic())
