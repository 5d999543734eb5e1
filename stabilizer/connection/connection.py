"""Connection: one local socket with its identity, bounded outbox, writer and state machine.

Writing never makes the caller wait on a socket: the outbox and writer are in
connection/writer.py, the frames it holds back (during a resume replay, or of a channel
whose subscribe is in flight) in connection/holding.py.

Every change of a connection's state is a method here or there: open -> closing -> closed,
held -> released, pong waiters, group membership, user data. Other modules read these
fields; none assigns them.

A write that finds the socket closed by the client is no failure of the server's where a
reader may read the client's close (a session's: ``reads_close``): the connection takes no
more frames and tells its fail handler, which (``client_gone`` set) leaves it to a reader
waiting for the client's next frame, or else releases it at once with the client's own
close. Any other connection is failed at once with 1011, as the seed did.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from stabilizer.config import CloseCode
from stabilizer.connection.ack_tokens import AckTokens
from stabilizer.connection.holding import Held, HoldingWriter
from stabilizer.connection.sockets import SocketLike, method_sender, sends_asgi
from stabilizer.connection.transports import prepared_writer
from stabilizer.connection.writer import OutboxLimits, State
from stabilizer.pure.rate import TokenBucket
from stabilizer.pure.sizes import estimate_size

__all__ = ["Connection", "FailHandler", "Held", "OutboxLimits", "State", "new_conn_id"]

_CONN_SEQ = itertools.count(1)
_CONN_PREFIX: Final = os.urandom(4).hex()
_BASE_CONNECTION_BYTES: Final = 512
_NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_USER_DATA: Final[Mapping[str, Any]] = MappingProxyType({})
# what the shared store knows of a connection's presence
_UNRECORDED: Final = 0  # nothing yet (or it was unreachable: the next resync writes it)
_RECORDED: Final = 1  # its registration recorded it
_RESYNCED: Final = 2  # a resync wrote it back (see Connection.resynced)


def new_conn_id() -> str:
    """Return an id unique to one socket across nodes and restarts (16 ASCII characters)."""
    return f"{_CONN_PREFIX}{next(_CONN_SEQ) % 16**8:08x}"


#: Called when a connection's outbox overflows or its socket fails (or, ``client_gone`` set,
#: a write found the client gone: the code is then what the node closes with).
FailHandler = Callable[["Connection", CloseCode, str], None]
class Connection(HoldingWriter):
    """One local socket: identity, bounded outbox, writer, liveness, groups and user data."""

    __slots__ = (
        "__weakref__",
        "_acks",
        "_changed_groups",
        "_close_waiter",
        "_groups",
        "_metadata_size",
        "_on_fail",
        "_pong_waiters",
        "_reads_close",
        "_registered",
        "_socket_closed",
        "_user_data",
        "client_id",
        "created_at",
        "info",
        "metadata",
        "owner",
        "protocol",
        "rate",
        "socket",
        "user_id",
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
        hold: bool = False,
        user_id: str | None = None,
        info: str = "",
        protocol: int = 1,
        reads_close: bool = False,
        rate: TokenBucket | None = None,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id  # the authenticated user, if any
        self.info = info  # that user's public info as compact JSON ("" for none)
        self.protocol = protocol
        self.rate = rate  # the inbound rate limit's state (None: no limit)
        self._wraps = protocol >= 2  # v2: application text arrives in `message` frames
        self.conn_id = new_conn_id()
        self.socket = socket
        self.owner = owner
        self.created_at = time.time()
        # Idle connections are the common case: what is empty is not allocated.
        self.metadata: Mapping[str, Any] = dict(metadata) if metadata else _NO_METADATA
        self._metadata_size = estimate_size(self.metadata)  # (measured once: it is given)
        self._asgi = sends_asgi(socket)
        self._by_method = None if self._asgi else method_sender(socket)
        self._prepared = prepared_writer(socket)
        self._limits = limits
        self._on_fail = on_fail
        self._reads_close = reads_close  # its reader releases it once the client closed
        self._gone = False  # a write found the socket closed by the client
        self._state = State.OPEN
        self._socket_closed = False  # the node's close of the socket has ended
        self._close_waiter: asyncio.Event | None = None  # made when someone waits for it
        self._registered = _UNRECORDED  # what the shared store knows of it
        self._acks: AckTokens | None = None  # ack tokens of frames sent, not acknowledged
        self._last_activity = time.monotonic()
        self._outbox = None
        self._queued_bytes = 0
        self._writing = False
        self._drain_task: asyncio.Task[None] | None = None
        self._suspended = None
        self._user_data: dict[str, Any] | None = None
        self._user_data_bytes = 0
        self._pong_waiters: list[asyncio.Future[float]] | None = None
        self._groups: set[str] | None = None
        self._changed_groups = False
        # While a resuming client is replayed its history, live frames wait here so that
        # none is delivered twice or out of order.
        self._held = [] if hold else None
        self._joining = None  # (channels whose subscribe is in flight: see holding.py)
        self._overflowed = None
        # The position the client holds per stream (from its first sequenced frame, or its
        # resume): nothing at or before it is sent again, however late the node delivers it.
        self._positions = None

    def __repr__(self) -> str:
        return f"<Connection {self.client_id!r} {self.conn_id} {self._state.name}>"

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> State:
        """open, closing or closed."""
        return self._state

    @property
    def is_open(self) -> bool:
        """True until the connection starts closing."""
        return self._state is State.OPEN

    @property
    def client_gone(self) -> bool:
        """True once a write found the socket closed by the client: the connection takes no
        more frames, and is released with the client's close."""
        return self._gone

    @property
    def registered(self) -> bool:
        """True once the shared store has recorded this connection's presence."""
        return self._registered != _UNRECORDED

    @property
    def resynced(self) -> bool:
        """A presence resync wrote this connection back. It may have done so after a
        newer connection elsewhere took the client and left again, so a close as replaced
        cannot assume that presence names the newer connection."""
        return self._registered == _RESYNCED

    @property
    def last_activity(self) -> float:
        """Monotonic time of the last frame received or written to the socket (one that
        only waits in the outbox behind a slow send is not written yet)."""
        return self._last_activity

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is a local member of."""
        return frozenset(self._groups) if self._groups else frozenset()

    @property
    def group_count(self) -> int:
        """How many groups this connection is a local member of."""
        return len(self._groups) if self._groups else 0

    @property
    def changed_groups(self) -> bool:
        """True once a join or leave went through this connection (one of a group it was
        not in included): replaced, it hands the client's memberships to the live socket."""
        return self._changed_groups

    @property
    def user_data(self) -> Mapping[str, Any]:
        """Application data attached to this connection (read-only view)."""
        return self._user_data if self._user_data is not None else _NO_USER_DATA

    @property
    def user_data_bytes(self) -> int:
        """Estimated bytes of the user data."""
        return self._user_data_bytes

    def memory_estimate(self) -> int:
        """Approximate bytes this connection holds: bookkeeping, metadata (as given), user
        data, outbox (frames held back included), ack tokens awaiting acks."""
        return (
            _BASE_CONNECTION_BYTES + len(self.client_id) + self._user_data_bytes
            + self._queued_bytes + self._metadata_size
            + (self._acks.bytes if self._acks is not None else 0)
        )

    # ------------------------------------------------------------------ writing

    def _expect_ack(self, token: str) -> None:
        if self._acks is None:
            self._acks = AckTokens()
        self._acks.expect(token)

    def take_forgotten(self, *, awaited: bool = False) -> list[str]:
        """The ack tokens forgotten since the last call (over the MAX_ACKS it keeps), with
        `awaited` all those still awaited too (it ended): their senders must be told."""
        return self._acks.take_forgotten(awaited=awaited) if self._acks is not None else []

    def take_ack(self, token: str) -> bool:
        """The client acknowledged `token`: True if a frame it was sent carried it (once)."""
        return self._acks is not None and self._acks.take(token)

    def acked_positions(self, streams: Iterable[str]) -> dict[str, tuple[int, str]] | None:
        """While it awaits ack tokens, what its client holds on `streams` (else None)."""
        awaiting = self._acks is not None and self._acks.awaiting
        return self._held_positions().holding(streams) if awaiting else None

    def _fail(self, code: CloseCode, reason: str) -> None:
        if self._state is State.OPEN:
            self._on_fail(self, code, reason)

    def _client_gone(self, reason: str) -> None:
        """A write found the socket closed by the client. Not the server's failure where a
        reader may read the client's close: the connection stops taking frames and the fail
        handler decides who releases it (reported as the client's close). Without such a
        reader, it is failed with 1011."""
        if not self._reads_close:
            self._fail(CloseCode.INTERNAL_ERROR, reason)
            return
        if self._state is not State.OPEN or self._gone:
            return
        self._gone = True
        self._outbox = None
        self._queued_bytes = 0
        self._drop_held()
        self._stop_writer()
        self._on_fail(self, CloseCode.NORMAL, reason)

    # ------------------------------------------------------------------ state changes

    def begin_close(self) -> int:
        """Open -> closing: stop taking frames, stop the writer, cancel pong waiters; return
        how many queued frames are dropped."""
        self._state = State.CLOSING
        dropped = len(self.outbox)
        self._outbox = None
        self._queued_bytes = 0
        self._drop_held()
        self._stop_writer()
        if self._pong_waiters:
            for waiter in self._pong_waiters:
                if not waiter.done():
                    waiter.cancel()
            self._pong_waiters = None
        return dropped

    def mark_registered(self, *, by_resync: bool = False) -> None:
        """The shared store recorded this connection's presence (a resync wrote it)."""
        self._registered = max(self._registered, _RESYNCED if by_resync else _RECORDED)

    def socket_done(self) -> None:
        """The node's close of the socket ended (close frame sent, or transport aborted)."""
        self._socket_closed = True
        if self._close_waiter is not None:
            self._close_waiter.set()

    async def socket_closed(self) -> None:
        """Wait until the node's close of the socket has ended (at once if it has).

        A handler whose connection the node is closing (replaced, timed out, shut down)
        waits here before it returns: an ASGI app that returns first makes the server drop
        the socket without the close frame (the client sees 1006 instead of the code)."""
        if self._socket_closed:
            return
        if self._close_waiter is None:
            self._close_waiter = asyncio.Event()
        await self._close_waiter.wait()

    def finish_close(self) -> None:
        """Closing -> closed: the socket is closed and the node's bookkeeping done."""
        self._state = State.CLOSED
        self.socket_done()

    def heard(self, now: float) -> None:
        """Inbound traffic at monotonic time `now`: answers every pending ping()."""
        self._last_activity = now
        waiters, self._pong_waiters = self._pong_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(now)

    def pong_waiter(self) -> asyncio.Future[float]:
        """A future resolved with the monotonic time of the next inbound frame."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._pong_waiters is None:
            self._pong_waiters = []
        self._pong_waiters.append(waiter)
        # a ping that timed out or was cancelled leaves nothing behind
        waiter.add_done_callback(self._forget_waiter)
        return waiter

    def _forget_waiter(self, waiter: asyncio.Future[float]) -> None:
        waiters = self._pong_waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    def join(self, group: str) -> None:
        """Record local membership of `group`."""
        if self._groups is None:
            self._groups = set()
        self._groups.add(group)
        self._changed_groups = True

    def changing_groups(self) -> None:
        """A change of its local memberships began (it lists a joined group once done)."""
        self._changed_groups = True

    def leave(self, group: str) -> None:
        """Drop local membership of `group`."""
        self._changed_groups = True
        if self._groups is not None:
            self._groups.discard(group)

    def put_user_data(self, key: str, value: Any, size: int) -> None:
        """Store `value` under `key`; `size` is its estimate (key included)."""
        if self._user_data is None:
            self._user_data = {}
        old = self._user_data.get(key, _NO_USER_DATA)
        if old is not _NO_USER_DATA:
            self._user_data_bytes -= estimate_size(key) + estimate_size(old)
        self._user_data[key] = value
        self._user_data_bytes += size

    def restore_user_data(self, items: Iterable[tuple[str, Any]]) -> None:
        """Put back user data a resumed session kept."""
        for key, value in items:
            self.put_user_data(key, value, estimate_size(key) + estimate_size(value))
