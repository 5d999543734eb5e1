"""A session's reading: where its handler is with the client's frames (``Reading``), and its
reading while a graceful shutdown closes its socket.

The server (uvicorn, whichever implementation) drops every frame that arrives once the
application's close has gone out. So the shutdown waits, bounded, for each session to be
caught up (``settled``: it waits for the client's next frame, or asks for none: a push-only
handler never does) before closing, and the session reads on after the node took its
connection out of service: what the server had received by then still reaches the
application, until the server reports the disconnect.

Only a session that waits for the client's next frame (``Reading.WAITING``) reads the
client's close: a write that finds the client gone leaves the release to it, and releases
any other session's connection at once (services/closing.py).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any, Final

from stabilizer.connection.connection import Connection

#: one ASGI event of a WebSocket
Event = dict[str, Any]


class Reading(enum.Enum):
    """Where a session's handler is with its client's frames."""

    ASKS_NONE = "asks none"  # asked for no frame yet, or reads no more: caught up
    WAITING = "waiting"  # waits for the client's next frame: caught up, and reading
    HANDLING = "handling"  # was handed a frame and has not asked for the next
#: loop passes a session must stay idle to count as caught up (see settled)
SETTLE_PASSES: Final = 8


async def settled(is_idle: Callable[[], bool], woken: Callable[[], Awaitable[object]]) -> None:
    """Return once `is_idle()` held over SETTLE_PASSES passes of the loop (`woken()` waits
    until it may hold again). The server reads its socket again only once its queue is
    empty, and a frame it reads then takes a few passes to reach the session."""
    passes = 0
    while passes < SETTLE_PASSES:
        if is_idle():
            passes += 1
            await asyncio.sleep(0)
        else:
            passes = 0
            await woken()


async def receive_closing(receive: Callable[[], Awaitable[Event]], conn: Connection,
                          close_timeout: float) -> Event:
    """The next event of a socket the node is closing in a shutdown: a frame the server had
    received, else its disconnect, which it reports once the node's close is done (waited
    for at most `close_timeout` after that: then a disconnect without a code)."""
    receiving = asyncio.ensure_future(receive())
    closed = asyncio.ensure_future(conn.socket_closed())
    try:
        await asyncio.wait((receiving, closed), return_when=asyncio.FIRST_COMPLETED)
        if not receiving.done():
            await asyncio.wait((receiving,), timeout=close_timeout)
        if receiving.done():
            return receiving.result()
        return {"type": "websocket.disconnect", "code": None}
    finally:
        closed.cancel()
        receiving.cancel()
