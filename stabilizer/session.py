"""Session: one socket served from admission to release (accept, token, pongs, limits).

Used through ``stabilizer.fastapi.serve`` / ``session`` or ``manager.open_session``::

    async with manager.open_session(websocket, client_id) as session:
        async for message in session:      # text or bytes; pongs never show up here
            ...

An admission that fails (bad token, limits, shutdown) closes the socket with its CloseCode
and leaves ``session.refused`` set; iterating such a session yields nothing, so endpoints
need no exception handling for expected refusals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from stabilizer._util import Message, encode_message, retry_advice, truncate_reason
from stabilizer.config import CloseCode, RateLimitAction, WebSocketConfig
from stabilizer.errors import (
    BackendUnavailable,
    ConnectionLimitExceededError,
    InvalidClientIdError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    TokenExpiredError,
    WebSocketStabilizerError,
)
from stabilizer.pool import Connection, Frame
from stabilizer.streams import PositionsError, parse_positions

if TYPE_CHECKING:
    from stabilizer.manager import WebSocketConnectionManager

logger = logging.getLogger(__name__)

_PONG: Final = "pong"
_SMALL_CONTROL: Final = 256


def control_type(text: str) -> str | None:
    """Return "pong" or "ping" for a heartbeat frame from a client, else None.

    Heartbeat frames are the text ``pong`` or a small JSON object whose "type" is "pong" or
    "ping". Anything else is an application message.
    """
    if text == _PONG:
        return _PONG
    if len(text) > _SMALL_CONTROL or not text.startswith("{") or '"type"' not in text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("type") in ("pong", "ping"):
        return str(value["type"])
    return None


def utf8_size_over(text: str, limit: int) -> bool:
    """True when `text` takes more than `limit` bytes in UTF-8 (cheap for ASCII)."""
    length = len(text)
    if length > limit:
        return True
    if length * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


class TokenBucket:
    """Inbound rate limit: `capacity` messages, refilled at capacity/window per second."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = float(capacity)
        self.stamp: float | None = None

    @classmethod
    def from_config(cls, config: WebSocketConfig) -> TokenBucket | None:
        """A bucket for the configured limit, or None when there is no limit."""
        if config.rate_limit_messages is None:
            return None
        return cls(config.rate_limit_messages, config.rate_limit_window)

    def take(self, now: float) -> bool:
        """Spend one token at time `now`; False when the bucket is empty."""
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Session:
    """Serves one WebSocket: admits it, yields its messages, and always releases it."""

    def __init__(
        self,
        manager: WebSocketConnectionManager,
        websocket: Any,
        client_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
        positions: str | None = None,
        welcome: bool = True,
    ) -> None:
        self.manager = manager
        self.websocket = websocket
        self.client_id = client_id
        self.conn: Connection | None = None
        self.refused: CloseCode | None = None
        self.resumed = False
        self.client_close_code: int | None = None
        self.recovered: bool | None = None
        self._metadata = metadata
        self._token = token
        self._positions = positions
        self._welcome = welcome
        self._bucket = TokenBucket.from_config(manager.config)

    async def __aenter__(self) -> Self:
        try:
            await self._admit()
        except InvalidClientIdError as exc:
            await self._refuse(CloseCode.INVALID_CLIENT_ID, str(exc))
        except PositionsError as exc:
            await self._refuse(CloseCode.POLICY_VIOLATION, f"bad positions: {exc}")
        except TokenExpiredError as exc:
            await self._refuse(CloseCode.TOKEN_EXPIRED, str(exc))
        except InvalidTokenError as exc:
            await self._refuse(CloseCode.INVALID_TOKEN, str(exc))
        except ShutdownError:
            code = self.manager.shutdown_close_code
            await self._refuse(code, retry_advice(self.manager.config.retry_jitter)
                               if code == CloseCode.SERVICE_RESTART else "server shutting down")
        except (ConnectionLimitExceededError, MemoryLimitExceededError,
                BackendUnavailable) as exc:
            logger.info("refusing client %r: %s", self.client_id, exc)
            await self._refuse(CloseCode.TRY_AGAIN_LATER,
                               retry_advice(self.manager.config.retry_jitter))
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: never leave an admitted socket
            if self.conn is not None:
                await asyncio.shield(self.manager.release(
                    self.conn, code=CloseCode.INTERNAL_ERROR, reason="server error"))
            raise
        return self

    async def _admit(self) -> None:
        manager = self.manager
        if not manager.is_accepting:
            raise ShutdownError("node is shutting down")
        positions = parse_positions(self._positions) if self._token else {}
        claims = None
        if self._token:
            claims = await manager.consume_reconnect_token(self._token)
            if claims.client_id != self.client_id:
                raise InvalidTokenError("token was issued to another client")
            self.resumed = True
        try:
            self.conn = await manager.admit(self.client_id, self.websocket, self._metadata,
                                            resuming=self.resumed)
        except BaseException:
            if claims is not None:  # refused (limits, shutdown): the token stays usable
                await manager.restore_reconnect_token(claims)
            raise
        if self.resumed:
            manager.stats.resumed_sessions += 1
        if self._welcome:
            self._send_welcome(self.conn)
        if self.resumed and manager.config.history_enabled:
            self.recovered, _, _ = await manager.resume(self.conn, positions)

    def _send_welcome(self, conn: Connection) -> None:
        manager = self.manager
        token = None
        if manager.config.enable_reconnect:
            try:
                token = manager.generate_reconnect_token(conn.client_id)
            except WebSocketStabilizerError as exc:  # no key yet (Redis down since start)
                logger.warning("no reconnect token for %r: %s", conn.client_id, exc)
        frame = {
            "type": "session",
            "client_id": conn.client_id,
            "conn_id": conn.conn_id,
            "node_id": manager.node_id,
            "resumed": self.resumed,
            "token": token,
            "heartbeat_interval": manager.config.heartbeat_interval,
            "history": manager.config.history_enabled,
        }
        conn.offer(Frame.text(json.dumps(frame, separators=(",", ":"))), time.monotonic())

    async def _refuse(self, code: CloseCode, reason: str) -> None:
        self.refused = code
        self.manager.stats.refused_connections += 1
        logger.info("refused client %r: %s (close %d)", self.client_id, reason, int(code))
        try:
            if getattr(getattr(self.websocket, "application_state", None), "name", "") == (
                "CONNECTING"
            ):
                await self.websocket.accept()
            async with asyncio.timeout(self.manager.config.close_timeout):
                await self.websocket.close(code=int(code), reason=truncate_reason(reason))
        except Exception:
            logger.debug("refusal close failed; peer gone", exc_info=True)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.conn is None:
            return
        # The client went away (or the server is going): its session stays resumable. The
        # application ending the loop itself ends the session.
        went_away = self.client_close_code is not None
        if exc is None or isinstance(exc, asyncio.CancelledError):
            code, reason = CloseCode.NORMAL, "session ended"
        else:
            code, reason = CloseCode.INTERNAL_ERROR, "server error"
            went_away = True
        await asyncio.shield(self.manager.release(
            self.conn, code=code, reason=reason, keep_session=went_away))

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while (message := await self.receive()) is not None:
            yield message

    async def receive(self) -> str | bytes | None:
        """Return the next application message, or None once the client is gone."""
        conn = self.conn
        if conn is None:
            return None
        manager = self.manager
        limit = manager.config.max_message_size
        while conn.is_open:
            event = await self.websocket.receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                self.client_close_code = event.get("code")
                return None
            if kind != "websocket.receive":
                continue
            text: str | None = event.get("text")
            data: bytes | None = event.get("bytes")
            size_over = (
                utf8_size_over(text, limit) if text is not None
                else data is not None and len(data) > limit
            )
            if size_over:
                manager.stats.oversize_closes += 1
                await manager.release(conn, code=CloseCode.MESSAGE_TOO_BIG,
                                      reason=f"message over {limit} bytes")
                return None
            manager.heard_from(conn)
            if text is not None:
                control = control_type(text)
                if control == _PONG:
                    manager.stats.pongs += 1
                    continue
                if control == "ping":
                    conn.offer(Frame.text('{"type":"pong"}'), time.monotonic())
                    continue
            if data is None and text is None:
                continue
            verdict = await self._within_rate(conn)
            if verdict == "closed":
                return None
            if verdict == "drop":
                continue
            manager.stats.messages_in += 1
            return text if text is not None else data
        return None

    async def _within_rate(self, conn: Connection) -> Literal["pass", "drop", "closed"]:
        """Apply the inbound rate limit to one message."""
        bucket = self._bucket
        if bucket is None or bucket.take(time.monotonic()):
            return "pass"
        manager = self.manager
        manager.stats.rate_limited += 1
        config = manager.config
        detail = f"over {config.rate_limit_messages} messages per {config.rate_limit_window:g}s"
        if config.rate_limit_action is RateLimitAction.CLOSE:
            await manager.release(conn, code=CloseCode.POLICY_VIOLATION,
                                  reason=f"rate limit: {detail}", keep_session=False)
            return "closed"
        frame = json.dumps({"type": "error", "code": "rate_limited", "detail": detail},
                           separators=(",", ":"))
        conn.offer(Frame.text(frame), time.monotonic())
        return "drop"

    async def send(self, message: Message) -> bool:
        """Send to this session's client without waiting on its socket; False if closed."""
        conn = self.conn
        if conn is None:
            return False
        payload = encode_message(message)
        frame = Frame.text(payload) if isinstance(payload, str) else Frame.binary(payload)
        return conn.offer(frame, time.monotonic())
