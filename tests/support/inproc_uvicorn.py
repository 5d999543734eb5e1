"""A uvicorn server in the test's own event loop, with a chosen WebSocket implementation, and
a record of every message the app sent through the server's ASGI send."""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from uvicorn.config import UvicornDeprecationWarning

#: uvicorn's implementations and, for each, its protocol class, ASGI send and receive
IMPLEMENTATIONS = {
    "websockets-sansio": ("uvicorn.protocols.websockets.websockets_sansio_impl",
                          "WebSocketsSansIOProtocol", "send", "receive"),
    "websockets": ("uvicorn.protocols.websockets.websockets_impl", "WebSocketProtocol",
                   "asgi_send", "asgi_receive"),
    "wsproto": ("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol", "send", "receive"),
}
# uvicorn's deprecated `websockets` implementation builds websockets' legacy server, which
# warns at every connection
LEGACY_WARNS = pytest.mark.filterwarnings("ignore::DeprecationWarning")
#: the implementations as test parameters (the legacy one with its warnings silenced)
IMPLS = [pytest.param(ws, marks=LEGACY_WARNS) if ws == "websockets" else ws
         for ws in sorted(IMPLEMENTATIONS)]


@dataclass
class Served:
    """A running server: its port and the messages that went through its ASGI send and
    receive."""

    port: int
    asgi_sends: list[dict[str, Any]] = field(default_factory=list)
    asgi_receives: list[dict[str, Any]] = field(default_factory=list)

    def data_receives(self) -> list[dict[str, Any]]:
        """The websocket.receive messages the app was handed."""
        return [m for m in self.asgi_receives if m["type"] == "websocket.receive"]

    def data_sends(self) -> list[dict[str, Any]]:
        """The websocket.send messages that took the ASGI send."""
        return [m for m in self.asgi_sends if m["type"] == "websocket.send"]


@contextlib.asynccontextmanager
async def served(app: Any, ws: str, monkeypatch: pytest.MonkeyPatch, *,
                 deflate: bool = False) -> AsyncIterator[Served]:
    """Run `app` under uvicorn with implementation `ws` on a loopback port."""
    with warnings.catch_warnings():  # uvicorn warns that its `websockets` one is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UvicornDeprecationWarning)
        config = uvicorn.Config(app, ws=ws, ws_per_message_deflate=deflate,
                                log_level="warning", lifespan="on", ws_ping_interval=None)
        config.load()
    module, name, method, receive = IMPLEMENTATIONS[ws]
    protocol = getattr(__import__(module, fromlist=[name]), name)
    assert config.ws_protocol_class is protocol
    record = Served(0)
    original = getattr(protocol, method)

    async def recording_send(self: Any, message: Any) -> None:
        record.asgi_sends.append(dict(message))
        await original(self, message)

    original_receive = getattr(protocol, receive)

    async def recording_receive(self: Any) -> Any:
        message = await original_receive(self)
        record.asgi_receives.append(dict(message))
        return message

    # the class keeps its identity: only the methods are wrapped, as a server's own
    monkeypatch.setattr(protocol, method, recording_send)
    monkeypatch.setattr(protocol, receive, recording_receive)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    record.port = sock.getsockname()[1]
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield record
    finally:
        await server.shutdown(sockets=[sock])
        sock.close()
