"""Closing a socket within a bound: the close frame goes out within close_timeout, or the
TCP connection is dropped.

Two ways a server's close outlasts any timeout put around it, both met under uvicorn:

- websockets-sansio and wsproto return from the ASGI close as soon as the frame is in the
  transport's buffer. Behind data a peer no longer reads, it never leaves, and uvicorn's
  later ``transport.close()`` waits for that buffer to drain, for as long as the peer acks
  TCP probes. So a close that returned with data still buffered is given the rest of the
  bound to drain, and the transport is aborted if it has not.
- websockets' legacy close catches the cancellation of a timeout around it and goes on
  waiting for the closing handshake (its own timers, ten seconds each). So the close runs
  as a task of its own that is waited for, not cancelled into: past the bound the transport
  is aborted (which ends that handshake too) and the task is left to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from stabilizer.connection.sockets import SocketLike, abort_transport, transport_of

logger = logging.getLogger(__name__)


async def close_within(socket: SocketLike, code: int, reason: str, timeout: float) -> bool:
    """Send a close frame with `code` and `reason`, the TCP connection dropped unless the
    frame leaves within `timeout` seconds; True when it left the server's buffers at once.

    False when the close raised (typically the peer is gone), did not return in time, or
    left its frame waiting behind data the peer has not read (the transport is then aborted
    once `timeout` has passed, unless it drained by then). A cancelled close aborts too.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    sending = loop.create_task(socket.close(code=code, reason=reason))
    try:
        await asyncio.wait({sending}, timeout=timeout)
    except asyncio.CancelledError:
        _give_up(socket, sending)
        raise
    if not sending.done():
        _give_up(socket, sending)
        return False
    if sending.cancelled() or sending.exception() is not None:
        # typically the peer is already gone; if it is not, the close frame may not have
        # gone out: drop the TCP connection rather than leave it
        logger.debug("close raised", exc_info=None if sending.cancelled() else sending.exception())
        abort_transport(socket)
        return False
    transport = transport_of(socket)
    if transport is None or not _buffered(transport):
        return True
    left = max(timeout - (loop.time() - started), 0.0)
    loop.call_later(left, _abort_if_buffered, transport)
    return False


def _give_up(socket: SocketLike, sending: asyncio.Task[None]) -> None:
    """Drop the TCP connection of a close that did not end in time, and leave its task to
    end with it (a close that ignores cancellation is not waited for)."""
    abort_transport(socket)
    sending.cancel()
    sending.add_done_callback(_retrieve)


def _retrieve(sending: asyncio.Task[None]) -> None:
    if not sending.cancelled():
        sending.exception()  # (retrieved: the close failed once it was given up on)


def _buffered(transport: Any) -> bool:
    size = getattr(transport, "get_write_buffer_size", None)
    try:
        return bool(callable(size) and size())
    except Exception:  # (a transport without a buffer to speak of)
        return False


def _abort_if_buffered(transport: Any) -> None:
    """Abort a transport whose buffer still holds data (its peer stopped reading); one
    that drained, or whose connection is lost already, is left alone."""
    if _buffered(transport):
        with contextlib.suppress(Exception):  # (lost meanwhile: nothing left to drop)
            transport.abort()
