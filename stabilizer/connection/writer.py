"""The writing half of a connection: frames reach the socket without making the caller wait.

``offer`` writes the frame's prepared bytes straight to the transport where the server
lets us (connection/transports.py); otherwise it starts the ASGI send coroutine in place
(connection/stepping.py): when the transport can take the frame (the usual case) the send
finishes within that first step and no task is created. Only when the send suspends (the
transport is paused because the peer reads slowly) does the connection start one writer
task, which finishes that send and drains the outbox. Frames offered meanwhile queue in the
outbox, bounded in frames (max_queue_size) and bytes (max_memory_per_connection, user data
included): overflow fails the connection with 1013, so a slow reader costs bounded memory
and never delays the others.

A write that finds the socket closed by the client (the server reports its close or the
lost connection, or the send raises as the server does then: OSError, WebSocketDisconnect)
is no failure of the server's: the connection decides what a client's close means
(``_client_gone``; ``client_close_code`` tells the code the client closed with). Any other
exception fails the connection with 1011.

``last_activity`` moves when a frame is written (prepared bytes handed to the transport, or
an ASGI send finished), not when it is offered: a frame that waits in the outbox behind a
stalled send is no activity, so a slow reader's clock stops where its socket did.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Sequence
from enum import Enum
from time import monotonic
from typing import Any, Final

from stabilizer.config import CloseCode
from stabilizer.connection.sockets import Frame, FrameSender, closed_by_client
from stabilizer.connection.stepping import Suspended, finish_send, start_send
from stabilizer.connection.transports import PreparedWriter

#: the code a client's close is reported with when it sent no close frame (or it is unknown)
NO_CLOSE_FRAME: Final = 1006

class State(Enum):
    """Lifecycle of one connection."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


#: State.OPEN read once: a member read through its Enum class costs about 0.1 µs on Python
#: 3.11, and the write path checks it for every frame of a broadcast to every recipient
_OPEN: Final = State.OPEN


class OutboxLimits:
    """Bounds shared by every connection of a node."""

    __slots__ = ("max_bytes", "max_frames", "write_timeout")

    def __init__(self, max_frames: int, max_bytes: int | None, write_timeout: float) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.write_timeout = write_timeout


class SocketWriter:
    """The outbox and writer of a Connection (which sets these fields and decides what a
    failure means in `_fail`)."""

    __slots__ = (
        "_asgi",
        "_by_method",
        "_drain_task",
        "_gone",
        "_last_activity",
        "_limits",
        "_outbox",
        "_prepared",
        "_queued_bytes",
        "_state",
        "_suspended",
        "_user_data_bytes",
        "_wraps",
        "_writing",
        "conn_id",
    )

    _asgi: bool  # frames go through the socket's ASGI send(), else through _by_method
    _by_method: FrameSender | None
    _drain_task: asyncio.Task[None] | None
    _gone: bool  # the client closed the socket: no frame is taken (its reader releases it)
    _last_activity: float
    _limits: OutboxLimits
    _outbox: deque[Frame] | None
    _prepared: PreparedWriter | None  # writes a frame's bytes to the transport, if allowed
    _queued_bytes: int
    _state: State
    _suspended: Suspended | None  # the send the writer task finishes, until it ends
    _user_data_bytes: int  # counted against the byte bound
    _wraps: bool  # protocol v2: application text goes out in `message` frames
    _writing: bool
    conn_id: str
    socket: Any

    @property
    def outbox(self) -> Sequence[Frame]:
        """Frames waiting for the socket (read-only view)."""
        return self._outbox if self._outbox is not None else ()

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outbox."""
        return self._queued_bytes

    @property
    def writing(self) -> bool:
        """True while a writer task finishes a suspended send or drains the outbox."""
        return self._writing

    @property
    def client_close_code(self) -> int:
        """The code of the close frame the client sent, as its server received it; 1006 (no
        close frame) when none came or the server does not tell."""
        prepared = self._prepared
        code = prepared.close_code() if prepared is not None else None
        return NO_CLOSE_FRAME if code is None else code

    @property
    def prepared(self) -> PreparedWriter | None:
        """The prepared write of the socket's server (None: every frame takes the ASGI
        send)."""
        return self._prepared


    def offer(self, frame: Frame, now: float) -> bool:
        """Hand a frame to the socket without waiting; False if the connection cannot take it.

        On overflow the connection is failed with 1013 (TRY_AGAIN_LATER) and False returned.
        """
        if self._state is not _OPEN or self._gone:
            return False
        if self._wraps:
            frame = frame.wrapped()
            if frame.ack is not None:
                self._expect_ack(frame.ack)
        if self._writing:
            return self._enqueue(frame)
        prepared = self._prepared
        try:
            if prepared is not None:
                if prepared.write(frame):
                    self._last_activity = now
                    return True
                if prepared.closed():
                    self._client_gone("send failed: the client closed")
                    return False
            suspended = start_send(self._sending(frame))
        except Exception as exc:
            self._send_failed(exc)
            return False
        if suspended is None:
            self._last_activity = now
        else:
            self._start_writer(suspended)
        return True

    def _sending(self, frame: Frame) -> Coroutine[Any, Any, None]:
        """The send of `frame` through the socket's ASGI send (a bound method made per
        send, not kept: one object fewer per connection for the cyclic collector), or
        through its methods."""
        if self._asgi:
            send: Coroutine[Any, Any, None] = self.socket.send(frame.message)
            return send
        assert self._by_method is not None  # set when the socket has no ASGI send
        return self._by_method(frame)

    def _start_writer(self, suspended: Suspended) -> None:
        self._writing = True
        task = asyncio.get_running_loop().create_task(
            self._drain(suspended), name=f"stabilizer-writer-{self.conn_id}"
        )
        task.add_done_callback(lambda done: self._writer_done(done, suspended))
        self._drain_task = task
        self._suspended = suspended

    def _writer_done(self, task: asyncio.Task[None], suspended: Suspended) -> None:
        # A writer cancelled before its first step never resumed the send: close it so its
        # finally blocks run and the transport waiter is released. Only that writer's own
        # state is reset: a newer writer may have started since this one ended.
        suspended.close()
        if self._suspended is suspended:
            self._suspended = None
        if self._drain_task is task:
            self._writing = False
            self._drain_task = None

    def _enqueue(self, frame: Frame) -> bool:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        if not self._room_for(frame, len(outbox)):
            return False
        outbox.append(frame)
        self._queued_bytes += frame.size
        return True

    def _room_for(self, frame: Frame, waiting: int) -> bool:
        """Whether `frame` may wait behind `waiting` frames within the outbox's bounds; if
        not, the connection is failed (1013: too slow) and False returned."""
        over = self._over_bounds(frame, waiting)
        if over is not None:
            self._fail(CloseCode.TRY_AGAIN_LATER, over)
            return False
        return True

    def _over_bounds(self, frame: Frame, waiting: int) -> str | None:
        """Why `frame` cannot wait behind `waiting` frames (which bound it would pass), or
        None when it can."""
        limits = self._limits
        if waiting >= limits.max_frames:
            return "too slow: outbox full"
        if limits.max_bytes is not None and (
            self._queued_bytes + frame.size + self._user_data_bytes > limits.max_bytes
        ):
            return "too slow: outbox over memory limit"
        return None

    async def _drain(self, suspended: Suspended) -> None:
        """Finish the suspended send, then write queued frames in order until none is left."""
        timeout = self._limits.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await finish_send(suspended)
            self._last_activity = monotonic()
            while self._outbox and self._state is _OPEN:
                frame = self._outbox.popleft()
                self._queued_bytes -= frame.size
                prepared = self._prepared
                if prepared is not None:
                    if prepared.write(frame):
                        self._last_activity = monotonic()
                        continue
                    if prepared.closed():
                        self._client_gone("send failed: the client closed")
                        return
                async with asyncio.timeout(timeout):
                    await self._sending(frame)
                self._last_activity = monotonic()
        except TimeoutError:
            self._fail(CloseCode.TRY_AGAIN_LATER, f"too slow: a write took over {timeout:g}s")
        except Exception as exc:
            self._send_failed(exc)
        finally:
            self._writing = False
            self._drain_task = None

    def _send_failed(self, exc: Exception) -> None:
        """A send raised: the client had closed the socket, or the server failed (1011)."""
        reason = f"send failed: {type(exc).__name__}"
        prepared = self._prepared
        if closed_by_client(exc) or (prepared is not None and prepared.closed()):
            self._client_gone(reason)
        else:
            self._fail(CloseCode.INTERNAL_ERROR, reason)

    def _stop_writer(self) -> None:
        """Cancel the writer task, and what its send waits on at once (as cancelling a Task
        does): a close written right after must not find the send's wait still pending (a
        task not started yet cancels it only at its first step)."""
        task = self._drain_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            if self._suspended is not None:
                self._suspended.cancel()

    async def flush(self, deadline: float) -> int:
        """Wait until the outbox is written or the loop clock passes `deadline`; return frames
        not yet written (the one in flight included)."""
        task = self._drain_task
        if task is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await asyncio.shield(task)
                except TimeoutError:
                    pass
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # our caller was cancelled, not the writer
        return len(self.outbox) + (1 if self._writing else 0)

    def _fail(self, code: CloseCode, reason: str) -> None:
        raise NotImplementedError  # Connection decides

    def _client_gone(self, reason: str) -> None:
        raise NotImplementedError  # Connection decides

    def _expect_ack(self, token: str) -> None:
        raise NotImplementedError  # Connection keeps the tokens
