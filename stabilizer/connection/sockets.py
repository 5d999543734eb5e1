"""What the connection layer needs from a socket: outgoing frames, how to write them, how to
close and, when a peer stops reading, how to drop the TCP connection.

A Starlette WebSocket is written through its ASGI ``send`` with a message built once per
frame and shared by every recipient, or, where the server lets us, with the frame's bytes,
framed once, written straight to its transport (connection/transports.py). Any other
object (a test double such as an AsyncMock, another framework's wrapper) is driven through
its own ``send_json`` / ``send_text`` / ``send_bytes`` methods when it has them, exactly as
fastapi-websocket-stabilizer did (a JSON message goes to ``send_json`` as the object it
was), else through an ASGI-style ``send``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any, Protocol, cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from stabilizer.pure.frames import app_message_frame, binary_message_frame
from stabilizer.pure.framing import data_frame, text_frame

logger = logging.getLogger(__name__)

#: An ASGI websocket message, built once and shared by every recipient.
AsgiMessage = MutableMapping[str, Any]
FrameSender = Callable[["Frame"], Coroutine[Any, Any, None]]


class SocketLike(Protocol):
    """The part of a WebSocket the connection layer uses (``send_text`` / ``send_bytes``
    are used instead of ``send`` when present)."""

    async def send(self, message: AsgiMessage) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Frame:
    """One outgoing websocket frame: the ASGI message plus its size in bytes, and, for a
    JSON message, the object it was serialized from (for sockets driven by send_json).

    ``app`` marks an application's own message. v2 connections receive its text wrapped in
    a ``message`` frame (naming the ``channel`` when it was sent to a group), and its bytes
    too when they were sent to a group or ask for an acknowledgement (a direct binary
    message needs nothing around it). The wrapped frame is built once per frame, on first
    use, and shared by every v2 recipient.
    """

    __slots__ = ("_wire", "_wrapped", "ack", "app", "channel", "message", "size", "value")

    def __init__(self, message: AsgiMessage, size: int, value: object = None) -> None:
        self.message = message
        self.size = size
        self.value = value
        self.app = False
        self.channel: str | None = None  # the group it was sent to, if any
        self.ack: str | None = None  # the token its one recipient acknowledges it with
        self._wrapped: Frame | None = None
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """The frame as a server writes it (unmasked, uncompressed), framed on first use and
        shared by every recipient a prepared write reaches (connection/transports.py)."""
        wire = self._wire
        if wire is None:
            text = self.message.get("text")
            wire = self._wire = (text_frame(text) if text is not None
                                 else data_frame(self.message["bytes"], text=False))
        return wire

    def wrapped(self) -> Frame:
        """This frame as a v2 connection receives it."""
        wrapped = self._wrapped
        if wrapped is not None:  # (every v2 recipient of a fan-out after the first)
            return wrapped
        if not self.app:
            return self
        text = self.message.get("text")
        if text is not None:
            wrapped = Frame.text(app_message_frame(text, self.channel, self.ack))
        elif self.channel is None and self.ack is None:
            return self  # a direct binary message (kept off _wrapped: no cycle to collect)
        else:
            wrapped = Frame.text(binary_message_frame(self.message["bytes"], self.channel,
                                                      self.ack))
        wrapped.ack = self.ack
        self._wrapped = wrapped
        return wrapped

    def asking_ack(self, token: str) -> Frame:
        """This frame, carrying `token` for its one recipient to acknowledge it with (a v2
        connection then gets even a direct binary message in a ``message`` frame)."""
        self.ack = token
        self.app = True
        return self

    @classmethod
    def text(cls, text: str) -> Frame:
        """Build a text frame (size counted in UTF-8 bytes).

        Raises:
            UnicodeEncodeError: the text holds a lone surrogate: no socket could be written
                this frame, so none is built (the caller hears of it, not each recipient).
        """
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        return cls({"type": "websocket.send", "text": text}, size)

    @classmethod
    def control(cls, text: str, value: object = None) -> Frame:
        """A frame of stabilizer's own (never wrapped for v2), with the object it was
        serialized from, for sockets driven by send_json."""
        frame = cls.text(text)
        frame.value = value
        return frame

    @classmethod
    def binary(cls, data: bytes) -> Frame:
        """Build a binary frame."""
        return cls({"type": "websocket.send", "bytes": data}, len(data))

    @classmethod
    def of(cls, payload: str | bytes, value: object = None) -> Frame:
        """An application's message: a text frame for text, a binary frame for bytes;
        `value` is the JSON object the text was serialized from, if it was one."""
        frame = cls.text(payload) if isinstance(payload, str) else cls.binary(payload)
        frame.app = True
        frame.value = value
        return frame


def is_starlette(socket: object) -> bool:
    """True for a real Starlette WebSocket (a mock made with spec=WebSocket is not one: its
    type is the mock's, whatever isinstance says)."""
    kind = type(socket)
    # (WebSocket is a Mapping, so issubclass asks the ABC machinery: the common case first)
    return kind is WebSocket or issubclass(kind, WebSocket)


def sends_asgi(socket: SocketLike) -> bool:
    """True when `socket` is driven through its ASGI ``send``, False when through its own
    send_text and send_bytes methods."""
    if is_starlette(socket):
        return True
    return not (callable(getattr(socket, "send_text", None))
                and callable(getattr(socket, "send_bytes", None)))


def method_sender(socket: object) -> FrameSender:
    """Drive `socket` by its send_json (for JSON messages, when it has one), send_text and
    send_bytes methods, as fastapi-websocket-stabilizer did."""
    send_json = getattr(socket, "send_json", None)
    send_text = getattr(socket, "send_text")  # noqa: B009 - asgi_sender checked it exists
    send_bytes = getattr(socket, "send_bytes")  # noqa: B009

    async def send(frame: Frame) -> None:
        if frame.value is not None and callable(send_json):
            await send_json(frame.value)
            return
        text = frame.message.get("text")
        if text is not None:
            await send_text(text)
        else:
            await send_bytes(frame.message["bytes"])

    return send


async def accept_if_needed(socket: object, subprotocol: str | None = None) -> None:
    """Accept a Starlette WebSocket that is still CONNECTING (the seed required accept()),
    choosing `subprotocol` if given."""
    if is_starlette(socket):
        websocket = cast(WebSocket, socket)  # is_starlette checked the type
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.accept(subprotocol=subprotocol)


def offers_subprotocol(socket: object, subprotocol: str) -> bool:
    """True when the client of a Starlette WebSocket offered `subprotocol` (never for other
    sockets, nor once the application accepted it itself: it can no longer choose one)."""
    if not is_starlette(socket):
        return False
    websocket = cast(WebSocket, socket)  # is_starlette checked the type
    if websocket.application_state is not WebSocketState.CONNECTING:
        return False
    offered = websocket.scope.get("subprotocols")
    return isinstance(offered, list) and subprotocol in offered


def closed_by_client(exc: Exception) -> bool:
    """True for what a send raises when the client closed the socket: Starlette's
    WebSocketDisconnect, or an OSError (uvicorn's ClientDisconnected, a reset connection),
    never a timeout."""
    return isinstance(exc, WebSocketDisconnect) or (
        isinstance(exc, OSError) and not isinstance(exc, TimeoutError))


def abort_transport(socket: object) -> bool:
    """Drop a socket's TCP connection at once, without a close handshake.

    Used when a close frame cannot be written within close_timeout (the peer stopped
    reading). ASGI hides the transport; uvicorn's protocol is reachable as the owner of the
    receive (or send) callable, which Starlette keeps. Returns False when it is not.
    A transport closing with data still buffered (a peer that stopped reading) is aborted
    too; one whose connection is already lost needs nothing, and asyncio's abort() of it
    may raise (one closed with data buffered and lost once the buffer drained has no loop
    any more): that is not an error here.
    """
    transport = transport_of(socket)
    if transport is None:
        return False
    try:
        transport.abort()
    except Exception:  # (already lost: nothing left to drop)
        logger.debug("abort of a transport already lost raised", exc_info=True)
    return True


def transport_of(socket: object) -> Any:
    """The transport under a socket, found as abort_transport() says (one with a callable
    ``abort``); None when it is not reachable."""
    for name in ("_receive", "_send"):
        owner = getattr(getattr(socket, name, None), "__self__", None)
        transport = getattr(owner, "transport", None)
        if callable(getattr(transport, "abort", None)):
            return transport
    return None
