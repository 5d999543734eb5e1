"""What the connection layer needs from a socket: outgoing frames, how to write them, how to
close and, when a peer stops reading, how to drop the TCP connection.

A Starlette WebSocket is written through its ASGI ``send`` with a message built once per
frame and shared by every recipient. Any other object (a test double, another framework's
wrapper) is driven through its own ``send_text`` / ``send_bytes`` methods when it has them,
as fastapi-websocket-stabilizer did, else through an ASGI-style ``send``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketState

#: An ASGI websocket message, built once and shared by every recipient.
AsgiMessage = MutableMapping[str, Any]
Sender = Callable[[AsgiMessage], Coroutine[Any, Any, None]]


class SocketLike(Protocol):
    """The part of a WebSocket the connection layer uses (``send_text`` / ``send_bytes``
    are used instead of ``send`` when present)."""

    async def send(self, message: AsgiMessage) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Frame:
    """One outgoing websocket frame: the ASGI message plus its size in bytes."""

    __slots__ = ("message", "size")

    def __init__(self, message: AsgiMessage, size: int) -> None:
        self.message = message
        self.size = size

    @classmethod
    def text(cls, text: str) -> Frame:
        """Build a text frame (size counted in UTF-8 bytes)."""
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return cls({"type": "websocket.send", "text": text}, size)

    @classmethod
    def binary(cls, data: bytes) -> Frame:
        """Build a binary frame."""
        return cls({"type": "websocket.send", "bytes": data}, len(data))

    @classmethod
    def of(cls, payload: str | bytes) -> Frame:
        """A text frame for text, a binary frame for bytes."""
        return cls.text(payload) if isinstance(payload, str) else cls.binary(payload)


def sender_for(socket: SocketLike) -> Sender:
    """How frames reach `socket`: its ASGI send, or its own send_text/send_bytes."""
    if isinstance(socket, WebSocket):
        return socket.send
    send_text = getattr(socket, "send_text", None)
    send_bytes = getattr(socket, "send_bytes", None)
    if callable(send_text) and callable(send_bytes):
        async def send_by_method(message: AsgiMessage) -> None:
            text = message.get("text")
            if text is not None:
                await send_text(text)
            else:
                await send_bytes(message["bytes"])
        return send_by_method
    return socket.send


async def accept_if_needed(socket: object) -> None:
    """Accept a Starlette WebSocket that is still CONNECTING (the seed required accept())."""
    if isinstance(socket, WebSocket) and socket.application_state is WebSocketState.CONNECTING:
        await socket.accept()


def abort_transport(socket: object) -> bool:
    """Drop a socket's TCP connection at once, without a close handshake.

    Used when a close frame cannot be written within close_timeout (the peer stopped
    reading). ASGI hides the transport; uvicorn's protocol is reachable as the owner of the
    receive (or send) callable, which Starlette keeps. Returns False when it is not.
    """
    for name in ("_receive", "_send"):
        owner = getattr(getattr(socket, name, None), "__self__", None)
        transport = getattr(owner, "transport", None)
        abort = getattr(transport, "abort", None)
        if callable(abort):
            abort()
            return True
    return False
