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

uvicorn's ``websockets`` (legacy) implementation reads in a task of its own and gets no
watcher: its pongs take the receive loop, as do those of any other server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from stabilizer.connection.transports import SANSIO, WSPROTO, known_server

logger = logging.getLogger(__name__)

_PONGS: Final = ("pong", '{"type":"pong"}')
_PONG_BYTES: Final = tuple(pong.encode("ascii") for pong in _PONGS)
_LONGEST: Final = max(len(pong) for pong in _PONGS)

OnPong = Callable[[], None]


def _answer(on_pong: OnPong) -> None:
    try:
        on_pong()
    except Exception:  # the server's read path must never see our failure
        logger.exception("pong handler failed; the pong is dropped")


def _sansio(server: Any, on_pong: OnPong) -> None:
    handle_text = server.handle_text  # the bound method, called for everything else
    _ = server.close_sent

    def taking_pongs(event: Any) -> None:
        data = event.data
        if (len(data) <= _LONGEST and event.fin and not server.close_sent
                and data in _PONG_BYTES):  # bytes or bytearray: compared by value
            _answer(on_pong)
            return
        handle_text(event)

    server.handle_text = taking_pongs


def _wsproto(server: Any, on_pong: OnPong) -> None:
    handle_message = server.handle_message
    buffer = server.buffer  # holds the start of a fragmented message, if any
    _ = (server.close_sent, buffer.value)

    def taking_pongs(event: Any) -> None:
        data = event.data
        if (isinstance(data, str) and len(data) <= _LONGEST and event.message_finished
                and buffer.value is None and not server.close_sent and data in _PONGS):
            _answer(on_pong)
            return
        handle_message(event)

    server.handle_message = taking_pongs


_WATCHERS: Final[dict[str, Callable[[Any, OnPong], None]]] = {
    SANSIO: _sansio,
    WSPROTO: _wsproto,
}


def watch_pongs(socket: object, on_pong: OnPong) -> bool:
    """Call `on_pong` for each pong `socket`'s server reads, instead of passing it to the
    application; False (nothing changed) when the server does not allow it."""
    found = known_server(socket)
    if found is None:
        return False
    name, server = found
    watcher = _WATCHERS.get(name)
    if watcher is None:
        return False
    try:
        watcher(server, on_pong)
    except AttributeError:  # another release of the server keeps its state elsewhere
        return False
    return True
