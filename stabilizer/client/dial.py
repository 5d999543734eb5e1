"""One attempt to open a socket to a server: what it was, how it ended, and the dial itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect as open_websocket
from websockets.exceptions import (
    ConnectionClosed,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Subprotocol

from stabilizer.config import CloseCode
from stabilizer.pure.client_protocol import (
    LOST,
    RETRYABLE_HTTP,
    ClientClosedError,
    HandshakeRejectedError,
)


@dataclass(slots=True)
class Attempt:
    """One connection attempt: where it went and how it ended."""

    url: str
    used_token: bool
    opened: bool = False
    stable: bool = False  # stayed open for RetryPolicy.stable_after seconds
    code: int = LOST
    reason: str = ""
    shed: bool = False  # the client closed it: the application fell behind (client/inbox.py)
    admitted: int = 0  # the messages its inbox kept, when shed


@dataclass(frozen=True, slots=True)
class DialOptions:
    """How every socket of a client is opened."""

    open_timeout: float
    close_timeout: float
    max_message_size: int | None
    headers: dict[str, str]
    subprotocols: tuple[str, ...] | None = None  # ("stabilizer.v2",) for protocol v2


async def dial(attempt: Attempt, target: str, options: DialOptions) -> WebSocket | None:
    """Open a socket to `target` (the attempt's URL with token and positions); None, with
    ``attempt.reason`` set, when the failure is worth another attempt.

    Raises:
        HandshakeRejectedError: the server refused the upgrade for good, or the URL is bad.
    """
    subprotocols = None if options.subprotocols is None else [
        Subprotocol(name) for name in options.subprotocols]
    try:
        return await open_websocket(
            target, open_timeout=options.open_timeout, close_timeout=options.close_timeout,
            max_size=options.max_message_size, additional_headers=options.headers or None,
            subprotocols=subprotocols)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status not in RETRYABLE_HTTP:
            raise HandshakeRejectedError(
                f"{attempt.url} answered HTTP {status} to the upgrade; check the URL "
                "and credentials", reason=f"HTTP {status}") from exc
        attempt.reason = f"HTTP {status}"
    except (InvalidURI, InvalidProxy) as exc:
        # str(exc) would repeat the full URL, token included: keep only the reason
        detail = getattr(exc, "msg", None) or type(exc).__name__
        raise HandshakeRejectedError(f"cannot connect to {attempt.url}: {detail}") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        attempt.reason = f"connect failed: {exc.__class__.__name__}: {exc}"
    return None


def record_close(attempt: Attempt, exc: ConnectionClosed, max_size: int | None) -> None:
    """Record how the socket of `attempt` ended: the code and reason the server closed it
    with, else 1006 (no close frame).

    Raises:
        ClientClosedError: the client closed it itself with 1009, as a message from the
            server was over `max_size`: final, as a server's 1009 is (a resume would only
            replay that message again).
    """
    if attempt.shed:
        return  # (the code and reason it was closed with are the attempt's)
    ours = exc.sent is not None and not exc.rcvd_then_sent
    if ours and exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
        reason = f"a message from the server was over max_message_size ({max_size} bytes)"
        raise ClientClosedError(f"{reason}; not reconnecting (a resume would replay it): "
                                "raise max_message_size, or send smaller messages",
                                code=CloseCode.MESSAGE_TOO_BIG, reason=reason) from exc
    if exc.rcvd is not None:
        attempt.code, attempt.reason = exc.rcvd.code, exc.rcvd.reason
    else:
        attempt.reason = "connection lost without a close frame"


async def hang_up(ws: WebSocket, timeout: float) -> None:
    """Close `ws` politely, or abort it when the close handshake takes over `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            await ws.close()
    except (TimeoutError, OSError):
        ws.transport.abort()
