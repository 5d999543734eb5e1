"""Local connections: Connection (socket + bounded outbox + writer) and the Pool.

Writing never makes the caller wait on a socket. ``Connection.offer`` starts the ASGI send
coroutine in place: when the transport can take the frame (the usual case) the send finishes
within that first step and no task is created. Only when the send suspends (the transport is
paused because the peer reads slowly) does the connection start one writer task, which
finishes that send and drains the outbox. Frames offered meanwhile queue in the outbox, which
is bounded in frames (max_queue_size) and in bytes (max_memory_per_connection): overflow closes
the connection with 1013, so a slow reader costs bounded memory and never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, MutableMapping, Sequence
from enum import Enum
from types import MappingProxyType
from typing import Any, Final, Protocol

from stabilizer.config import CloseCode

logger = logging.getLogger(__name__)

#: An ASGI websocket message, built once and shared by every recipient.
AsgiMessage = MutableMapping[str, Any]

_CONN_SEQ = itertools.count(1)
_CONN_PREFIX: Final = os.urandom(4).hex()
_BASE_CONNECTION_BYTES: Final = 512
_NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})


class SocketLike(Protocol):
    """The part of a Starlette WebSocket the pool uses."""

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


class State(Enum):
    """Lifecycle of one connection."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


def new_conn_id() -> str:
    """Return an id unique to one socket across nodes and restarts (16 ASCII characters)."""
    return f"{_CONN_PREFIX}{next(_CONN_SEQ) % 16**8:08x}"


FailHandler = Callable[["Connection", CloseCode, str], None]


class Connection:
    """One local socket: identity, bounded outbox, writer, liveness and user data."""

    __slots__ = (
        "__weakref__", "_drain_task", "_on_fail", "_outbox", "_send", "_user_data", "client_id",
        "conn_id", "created_at", "groups", "hold", "last_activity", "limits", "metadata",
        "owner", "pong_waiters", "queued_bytes", "replayed", "socket", "state",
        "user_data_bytes", "writing",
    )

    def __init__(
        self,
        client_id: str,
        socket: SocketLike,
        limits: OutboxLimits,
        on_fail: FailHandler,
        *,
        metadata: Mapping[str, Any] | None = None,
        owner: asyncio.Task[Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.conn_id = new_conn_id()
        self.socket = socket
        self._send = socket.send
        self.limits = limits
        self._on_fail = on_fail
        # Idle connections are the common case: what is empty is not allocated.
        self.metadata: Mapping[str, Any] = dict(metadata) if metadata else _NO_METADATA
        self._user_data: dict[str, Any] | None = None
        self.user_data_bytes = 0
        self.owner = owner
        self._outbox: deque[Frame] | None = None
        self.queued_bytes = 0
        self.writing = False
        self._drain_task: asyncio.Task[None] | None = None
        self.state = State.OPEN
        self.created_at = time.time()
        self.last_activity = time.monotonic()
        self.pong_waiters: list[asyncio.Future[float]] | None = None
        self.groups: set[str] | None = None
        # While a resuming client is replayed its history, live frames wait here with their
        # (stream, offset) so that none is delivered twice or out of order.
        self.hold: list[tuple[str | None, int | None, Frame]] | None = None
        # After a replay: the last offset replayed per stream, so that a live copy of a
        # replayed message that the node delivers late is not sent twice.
        self.replayed: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.client_id!r} {self.conn_id} {self.state.name}>"

    @property
    def outbox(self) -> Sequence[Frame]:
        """Frames waiting for the socket (read-only view)."""
        return self._outbox if self._outbox is not None else ()

    @property
    def user_data(self) -> dict[str, Any]:
        """Application data attached to this connection."""
        if self._user_data is None:
            self._user_data = {}
        return self._user_data

    @property
    def is_open(self) -> bool:
        """True until the connection starts closing."""
        return self.state is State.OPEN

    def deliver(self, frame: Frame, now: float, stream: str | None = None,
                offset: int | None = None) -> bool:
        """Like offer(), but a frame arriving during a resume replay waits its turn, and a
        frame already replayed is not sent again."""
        if self.hold is not None and self.state is State.OPEN:
            self.hold.append((stream, offset, frame))
            return True
        if self.replayed is not None and stream is not None and offset is not None and (
            offset <= self.replayed.get(stream, 0)
        ):
            return True
        return self.offer(frame, now)

    def offer(self, frame: Frame, now: float) -> bool:
        """Hand a frame to the socket without waiting; False if the connection cannot take it.

        On overflow the connection is failed with 1013 (TRY_AGAIN_LATER) and False returned.
        """
        if self.state is not State.OPEN:
            return False
        self.last_activity = now
        if self.writing:
            return self._enqueue(frame)
        coro = self._send(frame.message)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            self._fail(CloseCode.INTERNAL_ERROR, f"send failed: {type(exc).__name__}")
            return False
        self.writing = True
        task = asyncio.get_running_loop().create_task(
            self._drain(coro, yielded), name=f"stabilizer-writer-{self.conn_id}"
        )
        task.add_done_callback(lambda _: self._drain_done(coro))
        self._drain_task = task
        return True

    def _drain_done(self, coro: Coroutine[Any, Any, None]) -> None:
        # If the writer was cancelled before its first step, the hand-started send was never
        # resumed: close it so its finally blocks run and the transport waiter is released.
        coro.close()
        self.writing = False
        self._drain_task = None

    def _enqueue(self, frame: Frame) -> bool:
        limits = self.limits
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        if len(outbox) >= limits.max_frames:
            self._fail(CloseCode.TRY_AGAIN_LATER, "too slow: outbox full")
            return False
        if limits.max_bytes is not None and (
            self.queued_bytes + frame.size + self.user_data_bytes > limits.max_bytes
        ):
            self._fail(CloseCode.TRY_AGAIN_LATER, "too slow: outbox over memory limit")
            return False
        outbox.append(frame)
        self.queued_bytes += frame.size
        return True

    async def _drain(self, coro: Coroutine[Any, Any, None], yielded: object) -> None:
        """Finish the suspended send, then write queued frames in order until none is left."""
        timeout = self.limits.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await resume(coro, yielded)
            while self._outbox and self.state is State.OPEN:
                frame = self._outbox.popleft()
                self.queued_bytes -= frame.size
                async with asyncio.timeout(timeout):
                    await self._send(frame.message)
        except TimeoutError:
            self._fail(CloseCode.TRY_AGAIN_LATER, f"too slow: a write took over {timeout:g}s")
        except Exception as exc:
            self._fail(CloseCode.INTERNAL_ERROR, f"send failed: {type(exc).__name__}")
        finally:
            self.writing = False
            self._drain_task = None

    async def flush(self, deadline: float) -> int:
        """Wait until the outbox is written or the loop clock passes `deadline`; return frames
        not yet written (the one in flight included)."""
        task = self._drain_task
        if task is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(remaining):
                        await asyncio.shield(task)
        return len(self.outbox) + (1 if self.writing else 0)

    def _fail(self, code: CloseCode, reason: str) -> None:
        if self.state is State.OPEN:
            self._on_fail(self, code, reason)

    def begin_close(self) -> int:
        """Stop taking frames and stop the writer; return how many queued frames are dropped."""
        self.state = State.CLOSING
        dropped = len(self.outbox)
        self._outbox = None
        self.queued_bytes = 0
        task = self._drain_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self.pong_waiters:
            for waiter in self.pong_waiters:
                if not waiter.done():
                    waiter.cancel()
            self.pong_waiters = None
        return dropped

    def memory_estimate(self) -> int:
        """Approximate bytes this connection holds: bookkeeping, metadata, user data, outbox."""
        return (
            _BASE_CONNECTION_BYTES + len(self.client_id) + self.user_data_bytes
            + self.queued_bytes + estimate_size(self.metadata)
        )


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


class OutboxLimits:
    """Bounds shared by every connection of a node."""

    __slots__ = ("max_bytes", "max_frames", "write_timeout")

    def __init__(self, max_frames: int, max_bytes: int | None, write_timeout: float) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.write_timeout = write_timeout


async def resume(coro: Coroutine[Any, Any, None], yielded: object) -> None:
    """Drive a coroutine that was stepped by hand and suspended on `yielded` to its end.

    Does what an asyncio Task does: wait for the future the coroutine yielded, then resume it;
    the coroutine reads the future's outcome (result, exception, cancellation) itself. If this
    task is cancelled, the cancellation is passed into the coroutine, which unwinds its own
    ``finally`` blocks.
    """
    try:
        while True:
            try:
                if isinstance(yielded, asyncio.Future):
                    # The coroutine yielded the future "blocking"; a Task clears that flag
                    # when it takes the future over, and so must we before awaiting it.
                    yielded._asyncio_future_blocking = False
                    await yielded
                else:  # a bare yield asks for one turn of the loop
                    await asyncio.sleep(0)
            except asyncio.CancelledError as exc:
                if not (isinstance(yielded, asyncio.Future) and yielded.cancelled()):
                    yielded = coro.throw(exc)  # this task was cancelled: tell the coroutine
                    continue
            except Exception:  # the coroutine reads the future's exception itself
                pass
            yielded = coro.send(None)
    except StopIteration:
        return


def estimate_size(value: object, depth: int = 0) -> int:
    """Approximate the bytes a JSON-like value holds (bounded walk, like the seed's getsizeof)."""
    if isinstance(value, str):
        return 49 + len(value)
    if isinstance(value, bytes | bytearray):
        return 33 + len(value)
    if isinstance(value, bool | int | float) or value is None:
        return 28
    if depth > 8:
        return 64
    if isinstance(value, Mapping):
        return 64 + sum(
            estimate_size(k, depth + 1) + estimate_size(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return 56 + sum(estimate_size(item, depth + 1) for item in value)
    return 64


class Pool:
    """This node's connections by client id, in the order they connected.

    A fan-out visits connections in that order (the order their sockets and buffers were
    allocated: measurably cheaper than a hash-scattered walk at thousands of sockets) and
    cuts its snapshot into ``num_shards`` slices. An asyncio node has one thread, so there is
    no lock to shard; the fan-out itself yields to the loop every max_concurrent_broadcast
    recipients, so a large fan-out never stalls the loop.
    """

    __slots__ = ("_conns", "_slices")

    def __init__(self, num_shards: int) -> None:
        self._conns: dict[str, Connection] = {}
        self._slices = num_shards

    def __len__(self) -> int:
        return len(self._conns)

    def get(self, client_id: str) -> Connection | None:
        """Return the live connection of `client_id`, if any."""
        return self._conns.get(client_id)

    def put(self, conn: Connection) -> Connection | None:
        """Add `conn`, returning the connection it replaces (same client id), if any."""
        previous = self._conns.get(conn.client_id)
        if previous is not None:  # the newcomer takes the end of the order
            del self._conns[conn.client_id]
        self._conns[conn.client_id] = conn
        return previous

    def remove(self, conn: Connection) -> bool:
        """Remove `conn` only if it is still the one registered for its client id."""
        if self._conns.get(conn.client_id) is not conn:
            return False
        del self._conns[conn.client_id]
        return True

    def shards(self) -> Iterator[list[Connection]]:
        """Yield the connections as of now, in connection order, in ``num_shards`` slices."""
        snapshot = list(self._conns.values())
        if not snapshot:
            return
        size = -(-len(snapshot) // self._slices)
        for start in range(0, len(snapshot), size):
            yield snapshot[start:start + size]

    def client_ids(self) -> list[str]:
        """Return every local client id."""
        return list(self._conns)

    def connections(self) -> Iterator[Connection]:
        """Iterate every connection (do not await while iterating)."""
        return iter(self._conns.values())
