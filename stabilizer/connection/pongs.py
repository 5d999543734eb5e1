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

A pong after the server sent its close, or of a connection that is closing or gone, is
handed on as before. Only the exact texts above are taken; another spelling of the JSON
answer is read by the session, which counts it the same.

uvicorn's ``websockets`` (legacy) implementation reads in a task of its own and gets no
watcher: its pongs take the receive loop, as do those of any other server.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Final

from stabilizer.connection.connection import Connection
from stabilizer.connection.transports import SANSIO, WSPROTO

logger = logging.getLogger(__name__)

_PONGS: Final = ("pong", '{"type":"pong"}')
_PONG_BYTES: Final = tuple(pong.encode("ascii") for pong in _PONGS)
_LONGEST: Final = max(len(pong) for pong in _PONGS)

#: told of each pong of a connection (one callable shared by every connection of a node)
OnPong = Callable[[Connection], None]


class _Taker:
    """Stands in for one server object's method: answers pongs, passes the rest on. It holds
    the server and the connection weakly: the server holds it, and the connection's socket
    holds the server."""

    __slots__ = ("_conn", "_on_pong", "_server")

    def __init__(self, server: Any, conn: Connection, on_pong: OnPong) -> None:
        self._server = weakref.ref(server)
        self._conn = weakref.ref(conn)
        self._on_pong = on_pong

    def _answer(self) -> bool:
        """Count a pong; False when the connection is gone or closing (the server then
        hands the pong to the application as before)."""
        conn = self._conn()
        if conn is None or not conn.is_open:
            return False
        try:
            self._on_pong(conn)
        except Exception:  # the server's read path must never see our failure
            logger.exception("pong handler failed; the pong is dropped")
        return True


class _SansioTaker(_Taker):
    """websockets-sansio's ``handle_text``: a text frame with FIN is a whole message (a
    fragmented one arrives through ``handle_cont`` and is never taken)."""

    __slots__ = ()

    def __call__(self, event: Any) -> None:
        server = self._server()
        if server is None:
            return
        data = event.data  # bytes or bytearray: compared by value
        if (len(data) <= _LONGEST and event.fin and not server.close_sent
                and data in _PONG_BYTES and self._answer()):
            return
        type(server).handle_text(server, event)


class _WsprotoTaker(_Taker):
    """wsproto's ``handle_message``: taken only when no fragmented message is buffered."""

    __slots__ = ()

    def __call__(self, event: Any) -> None:
        server = self._server()
        if server is None:
            return
        data = event.data
        if (isinstance(data, str) and len(data) <= _LONGEST and event.message_finished
                and server.buffer.value is None and not server.close_sent
                and data in _PONGS and self._answer()):
            return
        type(server).handle_message(server, event)


#: server class -> (the method replaced, the stand-in, what it reads of the server)
_TAKERS: Final[dict[str, tuple[str, type[_Taker], tuple[str, ...]]]] = {
    SANSIO: ("handle_text", _SansioTaker, ("close_sent",)),
    WSPROTO: ("handle_message", _WsprotoTaker, ("close_sent", "buffer")),
}


def watch_pongs(conn: Connection, on_pong: OnPong) -> bool:
    """Call `on_pong(conn)` for each pong the server of `conn`'s socket reads, instead of
    handing it to the application; False (nothing changed) when the server does not allow
    it."""
    writer = conn.prepared  # found with the server once, when the connection was made
    if writer is None:
        return False
    name, server = writer.server
    entry = _TAKERS.get(name)
    if entry is None:
        return False
    method, taker, reads = entry
    if not callable(getattr(type(server), method, None)):
        return False  # another release of the server keeps its state elsewhere
    for attribute in reads:
        if not hasattr(server, attribute):
            return False
    setattr(server, method, taker(server, conn, on_pong))
    return True
