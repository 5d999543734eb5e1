"""Pongs taken where the server parses them: a client's ``pong`` never wakes the session's
receive loop.

A heartbeat answer is the text ``pong`` or ``{"type":"pong"}`` (docs/protocol.md). Through
the application it costs a queue put, a wake-up of the session's task, the Starlette and
ASGI receive, and, in uvicorn, a pause and a resume of reading around each queued message.
uvicorn has no hook for inbound frames, so on the one protocol object of a connection this
replaces the method that hands a whole text message to the application with one that
answers a pong itself and passes every other message on, unchanged and in order:

- websockets-sansio: ``handle_text`` (a text frame with FIN: a whole message; a fragmented
  one arrives through ``handle_cont`` and is never taken);
- wsproto: ``handle_message``, only when no fragmented message is being buffered.

The stand-in is one bound method per connection (the connection and a taking function
shared by the node's connections). The server holds it, it holds the connection, and the
connection holds the server through its socket: unwatch() takes it off when the connection
closes, so that a closed connection is freed without waiting for the cyclic collector.

A pong after the server sent its close, or of a connection that is closing, is handed on
as before. Only the exact texts above are taken; another spelling of the JSON
answer is read by the session, which counts it the same.

uvicorn's ``websockets`` (legacy) implementation reads in a task of its own and gets no
watcher: its pongs take the receive loop, as do those of any other server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import MethodType
from typing import Any, Final

from stabilizer.connection.connection import Connection
from stabilizer.connection.transports import SANSIO, WSPROTO

logger = logging.getLogger(__name__)

_PONGS: Final = ("pong", '{"type":"pong"}')
_PONG_BYTES: Final = tuple(pong.encode("ascii") for pong in _PONGS)
_LONGEST: Final = max(len(pong) for pong in _PONGS)

#: told of each pong of a connection (one callable shared by every connection of a node)
OnPong = Callable[[Connection], None]
#: takes one message the server would hand to the application: (connection, event)
Take = Callable[[Connection, Any], None]


class PongWatch:
    """Takes the pongs of a node's connections where their servers read them."""

    __slots__ = ("_fits", "_on_pong", "_takes")

    def __init__(self, on_pong: OnPong) -> None:
        self._on_pong = on_pong
        # server class -> (the method replaced, its stand-in, what that reads of the server)
        self._takes: dict[str, tuple[str, Take, tuple[str, ...]]] = {
            SANSIO: ("handle_text", self._sansio, ("close_sent",)),
            WSPROTO: ("handle_message", self._wsproto, ("close_sent", "buffer")),
        }
        # server class -> whether its objects have what the stand-in replaces and reads
        # (looked at once per class, not at every connect)
        self._fits: dict[type, bool] = {}

    def watch(self, conn: Connection) -> bool:
        """Call on_pong(conn) for each pong the server of `conn`'s socket reads, instead of
        handing it to the application; False (nothing changed) when the server does not
        allow it, or the connection is closing."""
        writer = conn.prepared  # found with the server once, when the connection was made
        if writer is None or not conn.is_open:
            return False
        entry = self._takes.get(writer.kind)
        if entry is None:
            return False
        method, take, reads = entry
        server = writer.server
        fits = self._fits.get(type(server))
        if fits is None:  # another release of the server may keep its state elsewhere
            fits = self._fits[type(server)] = callable(getattr(type(server), method, None)) \
                and all(hasattr(server, attribute) for attribute in reads)
        if not fits:
            return False
        setattr(server, method, MethodType(take, conn))
        return True

    def unwatch(self, conn: Connection) -> None:
        """Give the server of `conn` its own method back (the connection is closing)."""
        writer = conn.prepared
        entry = self._takes.get(writer.kind) if writer is not None else None
        if writer is None or entry is None:
            return
        state = getattr(writer.server, "__dict__", {})
        taker = state.get(entry[0])
        if isinstance(taker, MethodType) and taker.__self__ is conn:
            del state[entry[0]]

    def _answered(self, conn: Connection) -> bool:
        """Count a pong; False when the connection is closing (the server then hands the
        pong to the application as before)."""
        if not conn.is_open:
            return False
        try:
            self._on_pong(conn)
        except Exception:  # the server's read path must never see our failure
            logger.exception("pong handler failed; the pong is dropped")
        return True

    def _sansio(self, conn: Connection, event: Any) -> None:
        """websockets-sansio's ``handle_text``: a text frame with FIN is a whole message (a
        fragmented one arrives through ``handle_cont`` and is never taken)."""
        server = _server_of(conn)
        data = event.data  # bytes or bytearray: compared by value
        if (len(data) <= _LONGEST and event.fin and not server.close_sent
                and data in _PONG_BYTES and self._answered(conn)):
            return
        type(server).handle_text(server, event)

    def _wsproto(self, conn: Connection, event: Any) -> None:
        """wsproto's ``handle_message``: taken only when no fragmented message is
        buffered."""
        server = _server_of(conn)
        data = event.data
        if (isinstance(data, str) and len(data) <= _LONGEST and event.message_finished
                and server.buffer.value is None and not server.close_sent
                and data in _PONGS and self._answered(conn)):
            return
        type(server).handle_message(server, event)


def _server_of(conn: Connection) -> Any:
    writer = conn.prepared
    assert writer is not None  # watch() took pongs only for connections that have one
    return writer.server
