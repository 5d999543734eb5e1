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
from typing import TYPE_CHECKING, Any, Final, Self

from stabilizer._util import Message, encode_message, retry_advice, truncate_reason
from stabilizer.config import CloseCode
from stabilizer.errors import (
    BackendUnavailable,
    ConnectionLimitExceededError,
    InvalidClientIdError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    TokenExpiredError,
)
from stabilizer.pool import Connection, Frame

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
        welcome: bool = True,
    ) -> None:
        self.manager = manager
        self.websocket = websocket
        self.client_id = client_id
        self.conn: Connection | None = None
        self.refused: CloseCode | None = None
        self.resumed = False
        self.client_close_code: int | None = None
        self._metadata = metadata
        self._token = token
        self._welcome = welcome

    async def __aenter__(self) -> Self:
        try:
            await self._admit()
        except InvalidClientIdError as exc:
            await self._refuse(CloseCode.INVALID_CLIENT_ID, str(exc))
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
        return self

    async def _admit(self) -> None:
        manager = self.manager
        if not manager.is_accepting:
            raise ShutdownError("node is shutting down")
        if self._token:
            claimed = await manager.validate_reconnect_token(self._token)
            if claimed != self.client_id:
                raise InvalidTokenError("token was issued to another client")
            self.resumed = True
        self.conn = await manager.admit(self.client_id, self.websocket, self._metadata)
        if self.resumed:
            manager.stats.resumed_sessions += 1
        if self._welcome:
            self._send_welcome(self.conn)

    def _send_welcome(self, conn: Connection) -> None:
        manager = self.manager
        token = (
            manager.generate_reconnect_token(conn.client_id)
            if manager.config.enable_reconnect else None
        )
        frame = {
            "type": "session",
            "client_id": conn.client_id,
            "conn_id": conn.conn_id,
            "node_id": manager.node_id,
            "resumed": self.resumed,
            "token": token,
            "heartbeat_interval": manager.config.heartbeat_interval,
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
        if exc is None or isinstance(exc, asyncio.CancelledError):
            code, reason = CloseCode.NORMAL, "session ended"
        else:
            code, reason = CloseCode.INTERNAL_ERROR, "server error"
        await asyncio.shield(self.manager.release(self.conn, code=code, reason=reason))

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
                manager.stats.messages_in += 1
                return text
            if data is not None:
                manager.stats.messages_in += 1
                return data
        return None

    async def send(self, message: Message) -> bool:
        """Send to this session's client without waiting on its socket; False if closed."""
        conn = self.conn
        if conn is None:
            return False
        payload = encode_message(message)
        frame = Frame.text(payload) if isinstance(payload, str) else Frame.binary(payload)
        return conn.offer(frame, time.monotonic())
