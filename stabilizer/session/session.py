"""Session: one socket served from handshake to release (accept, credentials, token, pongs,
limits, and for v2 clients their control frames).

Used through ``stabilizer.fastapi.serve`` / ``session`` or ``manager.open_session``::

    async with manager.open_session(websocket, client_id) as session:
        async for message in session:      # str for a text frame, bytes for a binary one
            ...

Every value the client supplies (client id, credentials, token, positions, frames) is
checked before any backend work. An admission that fails (bad credentials or token,
limits, shutdown) closes the socket with its CloseCode and leaves ``session.refused`` set;
iterating such a session yields nothing, so endpoints need no exception handling for
expected refusals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast

from stabilizer.auth.identity import Identity
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import (
    AuthenticationError,
    BackendUnavailable,
    ConnectionLimitExceededError,
    InvalidClientIdError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    TokenExpiredError,
    WebSocketStabilizerError,
)
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import utf8_size_over
from stabilizer.pure.positions import PositionsError
from stabilizer.pure.text import (
    Message,
    check_client_id,
    encode_message,
    json_value,
)
from stabilizer.pure.tokens import TokenClaims
from stabilizer.pure.users import info_json
from stabilizer.pure.v2 import ProtocolError
from stabilizer.services.acks import Acks
from stabilizer.services.admission import ANONYMOUS, Admission, Seated
from stabilizer.services.auth import Auth, Expiry
from stabilizer.services.channels import Channels
from stabilizer.services.closing import Closing
from stabilizer.services.liveness import Liveness
from stabilizer.services.resume import Resume
from stabilizer.services.rpc import Procedures
from stabilizer.services.tokens import TokenService
from stabilizer.session.handshake import Asked, ClientGone, Greeting, greet
from stabilizer.session.inbound import Inbound, welcome_frame
from stabilizer.session.reading import Event, Reading, receive_closing, settled
from stabilizer.session.refusals import refusal

logger = logging.getLogger(__name__)


def _seated(greeting: Greeting) -> Seated:
    """Who a greeted connection is for, beyond its client id."""
    identity = greeting.identity
    if identity is not None:
        return Seated(identity.user_id, info_json(identity.info), greeting.protocol)
    return Seated(protocol=greeting.protocol) if greeting.protocol != 1 else ANONYMOUS


@dataclass(frozen=True, slots=True)
class SessionServices:
    """The part of a node a Session uses."""

    ctx: NodeContext
    admission: Admission
    closing: Closing
    liveness: Liveness
    tokens: TokenService
    resume: Resume | None  # only with history
    auth: Auth
    procedures: Procedures
    channels: Channels
    acks: Acks


class Session:
    """Serves one WebSocket: admits it, yields its messages, and always releases it.

    ``client_id`` may be None: a v2 client is then named by its device (under its user),
    a plain one gets a generated id; the ``session`` frame tells the client.
    """

    # (one per connection: no __dict__, one object fewer for the cyclic collector to walk)
    __slots__ = ("__weakref__", "_ctx", "_expiry", "_inbound", "_metadata", "_positions",
                 "_reading", "_services", "_token", "_waking", "_welcome",
                 "client_close_code", "client_id", "conn", "identity", "protocol", "recovered",
                 "refused", "resumed", "websocket")

    def __init__(
        self,
        services: SessionServices,
        websocket: Any,
        client_id: str | None,
        *,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
        positions: str | None = None,
        welcome: bool = True,
        identity: Identity | None = None,
    ) -> None:
        self._services = services
        self._ctx = services.ctx
        self.websocket = websocket
        self.client_id = client_id
        self.conn: Connection | None = None
        self.refused: CloseCode | None = None
        self.resumed = False
        self.client_close_code: int | None = None
        self.recovered: bool | None = None
        self.identity: Identity | None = identity
        self.protocol = 1
        self._token = token  # what the URL asked (Asked is made when the handshake runs)
        self._positions = positions
        self._metadata = metadata
        self._welcome = welcome
        self._expiry: Expiry | None = None
        self._inbound: Inbound | None = None  # made at the first message: idle ones need none
        self._reading = Reading.ASKS_NONE  # (see caught_up and reading)
        self._waking: asyncio.Event | None = None  # set when it is caught up again

    @property
    def user_id(self) -> str | None:
        """The authenticated user of this connection, if any."""
        return self.identity.user_id if self.identity is not None else None

    async def __aenter__(self) -> Self:
        try:
            greeting, claims = await self._greet()
            try:
                # awaited here, in no helper of its own (see Admission.admit)
                self.conn = await self._services.admission.admit(
                    greeting.client_id, self.websocket, self._metadata, resuming=self.resumed,
                    user=_seated(greeting),
                    welcome=(lambda conn: self._send_welcome(conn, greeting))
                    if self._welcome or self.protocol >= 2 else None,
                    reads_close=True)
            except BaseException:
                if claims is not None:  # refused (limits, shutdown): the token stays usable
                    await self._services.tokens.restore(claims)
                raise
            await self._admitted(greeting)
        except ClientGone as gone:
            self.client_close_code = gone.code
        except (InvalidClientIdError, ProtocolError, PositionsError, AuthenticationError,
                InvalidTokenError, TokenExpiredError, ShutdownError,
                ConnectionLimitExceededError, MemoryLimitExceededError,
                BackendUnavailable) as exc:
            await self._refuse(*refusal(self._ctx, self.client_id, exc))
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: never leave an admitted socket
            if self.conn is not None:
                await self._services.closing.release(
                    self.conn, code=CloseCode.INTERNAL_ERROR, reason="server error")
            raise
        return self

    async def _greet(self) -> tuple[Greeting, TokenClaims | None]:
        """Run the handshake and spend the client's token, if it shows one (the claims are
        restored if the admission refuses it)."""
        ctx = self._ctx
        if not ctx.is_accepting:
            raise ShutdownError("node is shutting down")
        greeting = await greet(ctx, self._services.auth, self.websocket,
                               Asked(self.client_id, self._token, self._positions, self.identity))
        self.client_id, self.identity = greeting.client_id, greeting.identity
        self.protocol = greeting.protocol
        check_client_id(self.client_id, ctx.config.max_client_id_length)
        claims = await self._spend_token(greeting) if greeting.token else None
        return greeting, claims

    async def _admitted(self, greeting: Greeting) -> None:
        """The connection is in the pool (greeted as it entered): take its pongs and,
        resuming, replay."""
        conn, services = self.conn, self._services
        assert conn is not None
        services.liveness.take_pongs(conn)  # the session would drop them anyway
        services.closing.reads(conn, self)
        if self.resumed:
            self._ctx.stats.resumed_sessions += 1
        if self.identity is not None:
            self._expiry = services.auth.watch(conn, self.identity)
        if self.resumed and services.resume is not None and conn.is_open:
            self.recovered, _, _ = await services.resume.resume(conn, greeting.positions,
                                                                greeting.channels)

    async def _spend_token(self, greeting: Greeting) -> TokenClaims:
        """Verify the token, check that it was issued to this client, and only then spend
        it: a token shown for another client id stays usable by its owner."""
        assert greeting.token is not None
        tokens = self._services.tokens
        claims = await tokens.verify(greeting.token)
        if claims.client_id != greeting.client_id:
            raise InvalidTokenError("token was issued to another client")
        await tokens.spend(claims)
        self.resumed = True
        return claims

    def _send_welcome(self, conn: Connection, greeting: Greeting) -> None:
        token = None
        if self._ctx.config.enable_reconnect:
            try:
                token = self._services.tokens.issue(conn.client_id)
            except WebSocketStabilizerError as exc:  # no key yet (Redis down since start)
                logger.warning("no reconnect token for %r: %s", conn.client_id, exc)
        frame = welcome_frame(self._ctx, conn, greeting, resumed=self.resumed, token=token)
        conn.offer(Frame.text(frame), time.monotonic())

    async def _refuse(self, code: CloseCode, reason: str) -> None:
        self.refused = code
        await self._services.closing.refuse(self.websocket, self.client_id, code, reason)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._now(Reading.ASKS_NONE)  # it reads no more
        if self.conn is None:
            return
        if self._inbound is not None:
            self._inbound.cancel_calls()  # their client is gone
        # The client went away (or the server is going): its session stays resumable. The
        # application ending the loop itself ends the session.
        went_away = self.client_close_code is not None
        if exc is None or isinstance(exc, asyncio.CancelledError):
            code, reason = CloseCode.NORMAL, "session ended"
        else:
            code, reason = CloseCode.INTERNAL_ERROR, "server error"
            went_away = True
        # release() finishes the close in a task of the node even if this is cancelled
        await self._services.closing.release(self.conn, code=code, reason=reason,
                                             keep_session=went_away,
                                             client_code=self.client_close_code)

    def __aiter__(self) -> Self:
        return self

    async def receive(self) -> str | bytes | None:
        """Return the next application message (str for a text frame, bytes for a binary
        one), or None once the client is gone."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None

    async def __anext__(self) -> str | bytes:
        # A plain iterator, not an async generator: the event loop keeps no record of it
        # and nothing needs finalising when the application's loop breaks off. The reading
        # is here, not in receive(): an idle connection's `async for` waits in one frame.
        conn = self.conn
        if conn is None:
            raise StopAsyncIteration
        ctx = self._ctx
        limit = ctx.config.max_message_size
        while True:
            if conn.is_open:
                event = await self._receive()
            elif not ctx.is_accepting:  # a shutdown: what the client sent before its close
                event = await receive_closing(self._receive, conn, ctx.config.close_timeout)
            else:  # the node closed it (replaced, timed out, evicted): nothing more counts
                raise StopAsyncIteration
            kind = event["type"]
            if kind == "websocket.disconnect":
                self.client_close_code = event.get("code")
                raise StopAsyncIteration
            if kind != "websocket.receive":
                continue
            text: str | None = event.get("text")
            data: bytes | None = event.get("bytes")
            oversize = (utf8_size_over(text, limit) if text is not None
                        else data is not None and len(data) > limit)
            if oversize:
                ctx.stats.oversize_closes += 1
                await self._services.closing.release(
                    conn, code=CloseCode.MESSAGE_TOO_BIG, reason=f"message over {limit} bytes")
                raise StopAsyncIteration
            if conn.is_open:  # (a closing one is no longer watched)
                self._services.liveness.heard_from(conn)
            message: str | bytes | None = data
            if text is not None:
                message = await self._sorter().text(self, conn, text)
            if message is None:
                continue
            verdict = await self._sorter().message_within_rate(conn)
            if verdict == "closed":
                raise StopAsyncIteration
            if verdict == "drop":
                continue
            ctx.stats.messages_in += 1
            return message

    async def _receive(self) -> Event:
        """The next ASGI event of the socket (see caught_up and reading while it waits)."""
        self._now(Reading.WAITING)
        try:
            return cast(Event, await self.websocket.receive())
        finally:
            self._reading = Reading.HANDLING

    def _now(self, reading: Reading) -> None:  # (asks for the next frame, or for none)
        self._reading = reading
        waking = self._waking
        if waking is not None:
            self._waking = None
            waking.set()

    @property
    def reading(self) -> bool:
        """True while the session waits for the client's next frame (its close included)."""
        return self._reading is Reading.WAITING

    async def caught_up(self) -> None:
        """Return once this session waits for the client's next frame, or asks for none (not
        yet, or no more): it handled every frame it was handed (see reading.py)."""
        await settled(lambda: self._reading is not Reading.HANDLING, self._woken)

    def _woken(self) -> Awaitable[bool]:
        waking = self._waking
        if waking is None:
            waking = self._waking = asyncio.Event()
        return waking.wait()

    def _sorter(self) -> Inbound:
        inbound = self._inbound
        if inbound is None:
            inbound = self._inbound = Inbound(self._services)
        return inbound

    def refreshed(self, identity: Identity) -> None:
        """A v2 client presented fresh credentials: keep them and re-arm the timers."""
        self.identity = identity
        self._expiry_of().set(identity.expires_at)

    def take_refresh(self) -> bool:
        """Count a refresh frame from the client; True when it is to be checked."""
        return self._expiry_of().take_refresh()

    def refresh_unchecked(self) -> None:
        """A refresh could not be checked now: ask for it again later, before the close."""
        self._expiry_of().retry()

    def _expiry_of(self) -> Expiry:
        expiry = self._expiry
        if expiry is None:  # the credentials never expired so far
            assert self.conn is not None
            expiry = self._expiry = self._services.auth.expiry(self.conn)
        return expiry

    async def send(self, message: Message) -> bool:
        """Send to this session's client without waiting on its socket; False if closed."""
        conn = self.conn
        if conn is None:
            return False
        return conn.offer(Frame.of(encode_message(message), json_value(message)),
                          time.monotonic())
