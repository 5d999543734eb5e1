"""Authentication at connect and during a connection: the application's authenticator,
bounded in time, and the timers of connections whose credentials expire.

A v2 connection is asked for fresh credentials ``auth_refresh_grace`` seconds before they
expire (pure/renewal.py: once per expiry, half a grace apart at least) and closed with
AUTH_EXPIRED (4003) if none came by the same grace after; a plain connection cannot refresh,
nor can any on a node without an authenticator (its identity came from the application, and
nothing could check a refresh), and is closed at that moment without being asked. Fresh
credentials bring the user's info up to date where the user's connections are listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from stabilizer.auth.identity import Authenticator, Credentials, Identity
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import AuthenticationError, BackendUnavailable, CredentialsExpiredError
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import refresh_frame
from stabilizer.pure.renewal import Renewal
from stabilizer.pure.users import info_json
from stabilizer.services.closing import Closing

logger = logging.getLogger(__name__)


class Expiry:
    """The refresh requests, the checks of refreshes and the close of one connection."""

    def __init__(self, conn: Connection, grace: float, *, can_refresh: bool,
                 on_expired: Callable[[Connection], None]) -> None:
        self._conn = conn
        self._renewal = Renewal(grace)
        self._can_refresh = can_refresh
        self._on_expired = on_expired
        self._handles: list[asyncio.TimerHandle] = []
        self.expires_at: float | None = None

    def set(self, expires_at: float | None) -> None:
        """(Re)arm the timers for credentials expiring at `expires_at` (None: never)."""
        self.cancel()
        self.expires_at = expires_at
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        now = time.time()
        ask_at = self._renewal.ask_at(expires_at) if self._can_refresh else None
        if ask_at is not None:
            self._handles.append(loop.call_later(max(ask_at - now, 0.0), self._ask))
        close_at = expires_at + self._renewal.grace
        self._handles.append(loop.call_later(max(close_at - now, 0.0), self._expire))

    def take_refresh(self) -> bool:
        """Count a refresh frame the client sent now; True when it is to be checked (an
        answer to a request, or half a grace after the last check)."""
        return self._renewal.take(time.time())

    def retry(self) -> None:
        """Ask again later for the credentials a refresh brought that could not be checked
        now (the authenticator's key source out of reach), if that is before the close."""
        if self.expires_at is None or not self._can_refresh:
            return
        now = time.time()
        ask_at = self._renewal.retry_at(self.expires_at, now)
        if ask_at is not None:
            loop = asyncio.get_running_loop()
            self._handles.append(loop.call_later(ask_at - now, self._ask))

    def cancel(self) -> None:
        """Disarm the timers (the connection ended, or got fresh credentials)."""
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    def _ask(self) -> None:
        if self.expires_at is not None:
            self._renewal.asked(self.expires_at, time.time())
            self._conn.offer(Frame.text(refresh_frame(self.expires_at)), time.monotonic())

    def _expire(self) -> None:
        self._handles.clear()
        if self._conn.is_open:
            logger.info("credentials of client %r expired", self._conn.client_id)
            self._on_expired(self._conn)


class Auth:
    """Runs the application's authenticator and watches expiring credentials."""

    def __init__(self, ctx: NodeContext, authenticator: Authenticator | None,
                 closing: Closing) -> None:
        self._ctx = ctx
        self._authenticator = authenticator
        self._closing = closing

    @property
    def enabled(self) -> bool:
        """True when the node has an authenticator."""
        return self._authenticator is not None

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        """The identity `credentials` prove; None when the node has no authenticator.

        Raises:
            CredentialsExpiredError: valid but expired credentials.
            AuthenticationError: anything else the authenticator refused.
            BackendUnavailable: the authenticator did not answer within connect_timeout, or
                could not check the credentials now (AuthUnavailable: a JWKS out of reach).
        """
        authenticator = self._authenticator
        if authenticator is None:
            return None
        limit = self._ctx.config.connect_timeout
        try:
            async with asyncio.timeout(limit):
                identity = await authenticator.authenticate(credentials)
        except (AuthenticationError, BackendUnavailable):  # a refusal; or come back later
            raise
        except TimeoutError as exc:
            raise BackendUnavailable(f"the authenticator did not answer within {limit:g}s") \
                from exc
        except Exception as exc:  # the application's code failed: refuse, keep the detail here
            logger.exception("the authenticator raised; refusing the connection")
            raise AuthenticationError("authentication failed") from exc
        if not isinstance(identity, Identity):
            raise AuthenticationError("authentication failed")
        if identity.expires_at is not None and identity.expires_at <= time.time():
            raise CredentialsExpiredError("the credentials have expired")
        return identity

    async def refresh(self, conn: Connection, credentials: Credentials) -> Identity:
        """Check fresh credentials of a live connection: the same user, not expired.

        Raises:
            CredentialsExpiredError: the new credentials are expired too.
            AuthenticationError: invalid, or they prove another user.
            BackendUnavailable: the authenticator did not answer in time, or could not
                check them now.
        """
        identity = await self.authenticate(credentials)
        if identity is None or identity.user_id != conn.user_id:
            raise AuthenticationError("the fresh credentials are for another user")
        return identity

    def watch(self, conn: Connection, identity: Identity) -> Expiry | None:
        """Arm the expiry timers of `conn` (None when its credentials never expire)."""
        if identity.expires_at is None:
            return None
        expiry = self.expiry(conn)
        expiry.set(identity.expires_at)
        return expiry

    def expiry(self, conn: Connection) -> Expiry:
        """The (unarmed) expiry of `conn`, whose credentials did not expire so far; only a
        v2 connection on a node whose authenticator can check a refresh is asked for one."""
        return Expiry(conn, self._ctx.config.auth_refresh_grace,
                      can_refresh=conn.protocol >= 2 and self.enabled, on_expired=self._expired)

    async def reseat(self, conn: Connection, identity: Identity) -> None:
        """Show the info of fresh credentials where the user's connections are listed (a
        store that cannot be reached gets it at the next resync)."""
        info = info_json(identity.info)
        if info == conn.info or conn.user_id is None:
            return
        conn.info = info  # what a resync records, from now on
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.users.set_info(
                conn.user_id, conn.client_id, conn.conn_id, info))
        except BackendUnavailable as exc:
            logger.warning("fresh info of client %r not stored (%s); resyncing",
                           conn.client_id, exc)
            ctx.want_resync()

    def _expired(self, conn: Connection) -> None:
        self._closing.retire(conn, CloseCode.AUTH_EXPIRED, "credentials expired")
