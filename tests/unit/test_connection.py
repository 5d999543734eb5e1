"""Frame, Pool and Connection with fake sockets; abort_transport; estimate_size."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection, OutboxLimits, State
from stabilizer.connection.pool import Pool
from stabilizer.connection.sockets import AsgiMessage, Frame, abort_transport
from stabilizer.pure.sizes import estimate_size

BOUND = 2.0  # seconds: an upper bound on waits that should end almost at once


class FakeSocket:
    """A socket whose send completes at once, or (`blocked`) waits for `gate`; may raise `error`.

    Sends numbered `hang_from` and later wait forever (a peer that stopped reading).
    """

    def __init__(
        self,
        *,
        blocked: bool = False,
        error: Exception | None = None,
        hang_from: int | None = None,
    ) -> None:
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.error = error
        self.hang_from = hang_from
        self.started = 0
        self.sent: list[AsgiMessage] = []
        self.interrupted: list[type[BaseException]] = []
        self.unwound = asyncio.Event()  # a send ended without delivering its frame
        self.closed: list[tuple[int, str | None]] = []

    async def send(self, message: AsgiMessage) -> None:
        number = self.started
        self.started += 1
        delivered = False
        try:
            if self.hang_from is not None and number >= self.hang_from:
                await asyncio.Event().wait()
            await self.gate.wait()
            if self.error is not None:
                raise self.error
            self.sent.append(message)
            delivered = True
        except BaseException as exc:
            self.interrupted.append(type(exc))
            raise
        finally:
            if not delivered:
                self.unwound.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed.append((code, reason))

    def texts(self) -> list[str]:
        return [message["text"] for message in self.sent]


class Failures:
    """The fail handler: records each call; closes the connection like the manager does."""

    def __init__(self, *, close: bool = True) -> None:
        self.calls: list[tuple[CloseCode, str]] = []
        self.called = asyncio.Event()
        self.close = close

    def __call__(self, conn: Connection, code: CloseCode, reason: str) -> None:
        self.calls.append((code, reason))
        self.called.set()
        if self.close:
            conn.begin_close()

    @property
    def codes(self) -> list[CloseCode]:
        return [code for code, _ in self.calls]


def connect(
    socket: FakeSocket,
    failures: Failures,
    *,
    max_frames: int = 16,
    max_bytes: int | None = None,
    write_timeout: float = BOUND,
) -> Connection:
    return Connection("alice", socket, OutboxLimits(max_frames, max_bytes, write_timeout),
                      failures)


def texts(*values: str) -> list[Frame]:
    return [Frame.text(value) for value in values]


async def flushed(conn: Connection) -> int:
    return await conn.flush(asyncio.get_running_loop().time() + BOUND)


# ----------------------------------------------------------------------------- Frame


@pytest.mark.parametrize(
    ("text", "size"), [("", 0), ("hello", 5), ("é", 2), ("€", 3), ("🙂", 4), ("aé€🙂", 10)]
)
def test_text_frame_size_is_utf8_bytes(text: str, size: int) -> None:
    frame = Frame.text(text)
    assert frame.size == size
    assert frame.message == {"type": "websocket.send", "text": text}


def test_binary_frame_size_is_its_length() -> None:
    frame = Frame.binary(b"\x00" * 7)
    assert frame.size == 7
    assert frame.message == {"type": "websocket.send", "bytes": b"\x00" * 7}


# ----------------------------------------------------------------------------- Pool


def make_conn(client_id: str) -> Connection:
    return Connection(client_id, FakeSocket(), OutboxLimits(4, None, 1.0), Failures())


@pytest.mark.parametrize("num_shards", [1, 3, 16])
def test_pool_holds_one_connection_per_client(num_shards: int) -> None:
    pool = Pool(num_shards)
    conns = [make_conn(f"client-{n}") for n in range(50)]
    for conn in conns:
        assert pool.put(conn) is None
    assert len(pool) == 50
    assert sorted(pool.client_ids()) == sorted(conn.client_id for conn in conns)
    assert all(pool.get(conn.client_id) is conn for conn in conns)
    assert {id(conn) for conn in pool.connections()} == {id(conn) for conn in conns}
    assert sum(len(shard) for shard in pool.shards()) == 50


def test_put_replaces_and_returns_the_previous_connection() -> None:
    pool = Pool(4)
    old, new = make_conn("alice"), make_conn("alice")
    pool.put(old)
    assert pool.put(new) is old
    assert len(pool) == 1
    assert pool.get("alice") is new


def test_put_adds_no_connection_that_began_to_close() -> None:
    """No close would take it out again: every one of them takes out only an open one."""
    pool = Pool(4)
    old, closed = make_conn("alice"), Connection(
        "alice", FakeSocket(), OutboxLimits(4, None, 1.0), Failures(), user_id="ann")
    pool.put(old)
    closed.begin_close()
    assert pool.put(closed) is old  # the newer socket replaces it all the same
    assert pool.get("alice") is None
    assert len(pool) == 0
    assert pool.of_user("ann") == []


def test_remove_only_removes_the_registered_connection() -> None:
    pool = Pool(4)
    old, new = make_conn("alice"), make_conn("alice")
    pool.put(old)
    pool.put(new)
    assert pool.remove(old) is False  # a replaced socket's cleanup must not drop its successor
    assert pool.get("alice") is new
    assert len(pool) == 1
    assert pool.remove(new) is True
    assert pool.get("alice") is None
    assert len(pool) == 0
    assert pool.remove(new) is False
    assert len(pool) == 0


def test_get_of_an_unknown_client_is_none() -> None:
    assert Pool(4).get("nobody") is None


def test_shards_are_copies() -> None:
    pool = Pool(1)
    pool.put(make_conn("a"))
    shard = next(pool.shards())
    pool.put(make_conn("b"))
    assert len(shard) == 1


def test_conn_ids_are_unique() -> None:
    ids = {make_conn("alice").conn_id for _ in range(1000)}
    assert len(ids) == 1000


# ----------------------------------------------------------------------------- offer: fast path


async def test_offer_to_a_ready_socket_delivers_synchronously_without_a_task() -> None:
    socket, failures = FakeSocket(), Failures()
    conn = connect(socket, failures)
    tasks_before = asyncio.all_tasks()
    assert conn.offer(Frame.text("hi"), now=12.5) is True
    assert socket.texts() == ["hi"]  # no await since the offer
    assert asyncio.all_tasks() == tasks_before
    assert conn.last_activity == 12.5
    assert failures.calls == []


async def test_many_offers_to_a_ready_socket_arrive_in_order() -> None:
    socket = FakeSocket()
    conn = connect(socket, Failures(), max_frames=1)
    accepted = [conn.offer(frame, now=0.0) for frame in texts(*map(str, range(100)))]
    assert accepted == [True] * 100
    assert socket.texts() == [str(n) for n in range(100)]


async def test_binary_frames_are_sent_as_bytes() -> None:
    socket = FakeSocket()
    conn = connect(socket, Failures())
    assert conn.offer(Frame.binary(b"\x01\x02"), now=0.0)
    assert socket.sent == [{"type": "websocket.send", "bytes": b"\x01\x02"}]


# ----------------------------------------------------------------------------- offer: slow peer


async def test_blocked_send_returns_at_once_and_later_frames_queue_in_order() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures()
    conn = connect(socket, failures)
    assert [conn.offer(frame, now=0.0) for frame in texts("a", "b", "c", "d")] == [True] * 4
    assert socket.sent == []
    assert socket.started == 1  # one send in flight, three frames waiting
    socket.gate.set()
    assert await flushed(conn) == 0
    assert socket.texts() == ["a", "b", "c", "d"]
    assert failures.calls == []


async def test_a_frame_that_only_waits_is_no_activity_and_its_write_is() -> None:
    """last_activity is the last frame in or out: offered behind a stalled send, a frame has
    not gone out yet (a slow reader must not look busy to the lru eviction)."""
    socket = FakeSocket(blocked=True)
    conn = connect(socket, Failures())
    idle_since = conn.last_activity
    assert conn.offer(Frame.text("a"), now=idle_since + 100.0)  # the send suspends
    assert conn.offer(Frame.text("b"), now=idle_since + 200.0)  # queued behind it
    assert conn.last_activity == idle_since
    written_after = time.monotonic()
    socket.gate.set()
    assert await flushed(conn) == 0
    assert written_after <= conn.last_activity < idle_since + 100.0


async def test_after_the_backlog_drains_sends_are_synchronous_again() -> None:
    socket = FakeSocket(blocked=True)
    conn = connect(socket, Failures())
    conn.offer(Frame.text("a"), now=0.0)
    conn.offer(Frame.text("b"), now=0.0)
    socket.gate.set()
    assert await flushed(conn) == 0
    tasks_before = asyncio.all_tasks()
    assert conn.offer(Frame.text("c"), now=0.0)
    assert socket.texts() == ["a", "b", "c"]
    assert asyncio.all_tasks() == tasks_before


async def test_flush_returns_the_frames_still_queued_at_the_deadline() -> None:
    socket = FakeSocket(blocked=True)
    conn = connect(socket, Failures())
    for frame in texts("a", "b", "c"):
        conn.offer(frame, now=0.0)
    assert await conn.flush(asyncio.get_running_loop().time() + 0.02) == 3  # in flight too
    socket.gate.set()
    assert await flushed(conn) == 0


async def test_flush_without_a_backlog_returns_zero() -> None:
    conn = connect(FakeSocket(), Failures())
    assert await conn.flush(0.0) == 0


# ----------------------------------------------------------------------------- offer: limits


async def test_outbox_over_max_frames_fails_the_connection_with_try_again_later() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures(close=False)
    conn = connect(socket, failures, max_frames=3)
    accepted = [conn.offer(frame, now=0.0) for frame in texts("a", "b", "c", "d")]
    assert accepted == [True] * 4  # one in flight, three queued
    assert failures.calls == []
    assert conn.offer(Frame.text("e"), now=0.0) is False
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    assert conn.offer(Frame.text("f"), now=0.0) is False
    socket.gate.set()
    assert await flushed(conn) == 0
    assert socket.texts() == ["a", "b", "c", "d"]  # the refused frames never go out


async def test_overflow_with_the_managers_handler_closes_and_refuses_more() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures(close=True)
    conn = connect(socket, failures, max_frames=3)
    for frame in texts("a", "b", "c", "d"):
        conn.offer(frame, now=0.0)
    assert conn.offer(Frame.text("e"), now=0.0) is False
    assert conn.offer(Frame.text("f"), now=0.0) is False
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]  # reported once
    assert not conn.is_open


async def test_outbox_over_max_bytes_fails_with_try_again_later() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures(close=False)
    conn = connect(socket, failures, max_frames=100, max_bytes=10)
    assert conn.offer(Frame.text("x" * 50), now=0.0)  # in flight: handed to the socket
    assert conn.offer(Frame.text("12345"), now=0.0)
    assert conn.offer(Frame.text("é€"), now=0.0)  # 5 bytes: exactly at the limit
    assert failures.calls == []
    assert conn.offer(Frame.text("z"), now=0.0) is False
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    socket.gate.set()
    assert await flushed(conn) == 0
    assert socket.texts() == ["x" * 50, "12345", "é€"]


async def test_user_data_counts_against_max_bytes() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures(close=False)
    conn = connect(socket, failures, max_frames=100, max_bytes=10)
    conn.put_user_data("k", "v", 8)
    conn.offer(Frame.text("in flight"), now=0.0)
    assert conn.offer(Frame.text("12"), now=0.0) is True
    assert conn.offer(Frame.text("3"), now=0.0) is False
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]


async def test_queued_bytes_are_released_as_frames_are_written() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures(close=False)
    conn = connect(socket, failures, max_frames=100, max_bytes=10)
    for _ in range(3):
        conn.offer(Frame.text("first"), now=0.0)
        assert conn.offer(Frame.text("0123456789"), now=0.0)
        socket.gate.set()
        assert await flushed(conn) == 0
        socket.gate.clear()
    assert failures.calls == []
    assert len(socket.sent) == 6


# ----------------------------------------------------------------------------- offer: failures


async def test_send_blocked_past_write_timeout_fails_with_try_again_later() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures()
    conn = connect(socket, failures, write_timeout=0.05)
    assert conn.offer(Frame.text("a"), now=0.0) is True
    async with asyncio.timeout(BOUND):
        await failures.called.wait()
        await socket.unwound.wait()
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    assert socket.interrupted == [asyncio.CancelledError]  # the stuck send was cancelled
    assert socket.sent == []


async def test_a_queued_frame_that_blocks_past_write_timeout_fails_too() -> None:
    socket = FakeSocket(blocked=True, hang_from=1)
    failures = Failures()
    conn = connect(socket, failures, write_timeout=0.05)
    conn.offer(Frame.text("a"), now=0.0)
    conn.offer(Frame.text("b"), now=0.0)
    socket.gate.set()
    async with asyncio.timeout(BOUND):
        await failures.called.wait()
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    assert socket.texts() == ["a"]


async def test_send_that_raises_at_once_fails_with_internal_error() -> None:
    socket = FakeSocket(error=ConnectionResetError("peer gone"))
    failures = Failures()
    conn = connect(socket, failures)
    tasks_before = asyncio.all_tasks()
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert failures.codes == [CloseCode.INTERNAL_ERROR]
    assert "ConnectionResetError" in failures.calls[0][1]
    assert asyncio.all_tasks() == tasks_before


async def test_send_that_raises_after_blocking_fails_with_internal_error() -> None:
    socket = FakeSocket(blocked=True, error=RuntimeError("transport closed"))
    failures = Failures()
    conn = connect(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is True
    conn.offer(Frame.text("b"), now=0.0)
    socket.gate.set()
    async with asyncio.timeout(BOUND):
        await failures.called.wait()
    assert failures.codes == [CloseCode.INTERNAL_ERROR]
    assert socket.sent == []


async def test_offer_after_close_is_refused_without_sending() -> None:
    socket = FakeSocket()
    failures = Failures()
    conn = connect(socket, failures)
    assert conn.begin_close() == 0
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert socket.started == 0
    assert failures.calls == []
    assert conn.state is State.CLOSING


# ----------------------------------------------------------------------------- begin_close


async def test_begin_close_drops_queued_frames_and_cancels_the_writer() -> None:
    socket = FakeSocket(blocked=True)
    failures = Failures()
    conn = connect(socket, failures)
    for frame in texts("a", "b", "c", "d"):
        conn.offer(frame, now=0.0)
    # Let the writer task start and suspend on the gate; the flush deadline passes at once.
    assert await conn.flush(asyncio.get_running_loop().time() + 0.01) == 4
    assert conn.begin_close() == 3
    async with asyncio.timeout(BOUND):
        await socket.unwound.wait()  # the in-flight send is cancelled, not left hanging
    assert socket.interrupted == [asyncio.CancelledError]
    socket.gate.set()
    assert await flushed(conn) == 0
    assert socket.sent == []
    assert socket.started == 1
    assert failures.calls == []
    assert conn.queued_bytes == 0
    assert conn.offer(Frame.text("e"), now=0.0) is False


async def test_begin_close_before_the_writer_ran_still_cancels_the_send() -> None:
    socket = FakeSocket(blocked=True)
    conn = connect(socket, Failures())
    conn.offer(Frame.text("a"), now=0.0)
    conn.offer(Frame.text("b"), now=0.0)
    assert conn.begin_close() == 1  # e.g. a disconnect() right after a send
    async with asyncio.timeout(0.5):
        await socket.unwound.wait()
    assert len(socket.interrupted) == 1  # cancelled or closed: either way its finally ran
    assert await flushed(conn) == 0


# ----------------------------------------------------------------------------- abort_transport


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


class FakeProtocol:
    def __init__(self, transport: object) -> None:
        self.transport = transport

    async def receive(self) -> None: ...

    async def send(self, message: object) -> None: ...


class FakeWebSocket:
    def __init__(self, *, receive: object = None, send: object = None) -> None:
        if receive is not None:
            self._receive = receive
        if send is not None:
            self._send = send


def test_abort_transport_aborts_through_the_receive_callable() -> None:
    transport = FakeTransport()
    assert abort_transport(FakeWebSocket(receive=FakeProtocol(transport).receive)) is True
    assert transport.aborted == 1


def test_abort_transport_falls_back_to_the_send_callable() -> None:
    transport = FakeTransport()
    socket = FakeWebSocket(receive=lambda: None, send=FakeProtocol(transport).send)
    assert abort_transport(socket) is True
    assert transport.aborted == 1


@pytest.mark.parametrize(
    "socket",
    [
        object(),
        FakeWebSocket(),
        FakeWebSocket(receive=lambda: None),
        FakeWebSocket(receive=FakeProtocol(None).receive),
        FakeWebSocket(receive=FakeProtocol(object()).receive),
        FakeWebSocket(receive=FakeProtocol(FakeProtocol(None)).receive),
    ],
    ids=["plain-object", "no-callables", "function", "no-transport", "transport-without-abort",
         "abort-not-callable"],
)
def test_abort_transport_returns_false_when_there_is_no_transport(socket: object) -> None:
    assert abort_transport(socket) is False


# ----------------------------------------------------------------------------- estimate_size


@pytest.mark.parametrize(
    ("small", "large"),
    [
        ("x", "x" * 100),
        (b"x", b"x" * 100),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": "x"}, {"a": "x" * 1000}),
        ([1], [1, 2, 3]),
        ((1,), (1, "two")),
        ({"nested": {"deep": [1]}}, {"nested": {"deep": [1, "x" * 500]}}),
    ],
    ids=["str", "bytes", "dict-keys", "dict-values", "list", "tuple", "nested"],
)
def test_estimate_size_grows_with_content(small: object, large: object) -> None:
    assert 0 < estimate_size(small) < estimate_size(large)


def test_estimate_size_counts_long_strings_by_length() -> None:
    assert estimate_size("x" * 10_000) - estimate_size("") == 10_000


def test_estimate_size_of_a_cycle_is_finite() -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    assert 0 < estimate_size(cycle) < 10_000


async def test_memory_estimate_includes_queued_frames() -> None:
    conn = connect(FakeSocket(blocked=True), Failures())
    before = conn.memory_estimate()
    conn.offer(Frame.text("in flight"), now=0.0)
    conn.offer(Frame.text("x" * 1000), now=0.0)
    assert conn.memory_estimate() - before == 1000
    conn.begin_close()
    assert conn.memory_estimate() == before


# ----------------------------------------------------------------------------- review fixes


class GatedSocket:
    """Every send waits for a gate the test opens; counts sends in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.gates: list[asyncio.Future[None]] = []
        self.after_send: Any = None

    async def send(self, message: AsgiMessage) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        try:
            await gate
        finally:
            self.in_flight -= 1
        if self.after_send is not None:  # a step of another task, ready in the same turn
            hook, self.after_send = self.after_send, None
            asyncio.get_running_loop().call_soon(hook)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        return None


async def test_a_finished_writer_does_not_reset_the_state_of_a_newer_one() -> None:
    """The done callback of writer 1 runs a turn after it ends; a send that suspended in
    between started writer 2, whose state must survive (else two sends run at once)."""
    sock = GatedSocket()
    conn = Connection("alice", sock, OutboxLimits(100, None, 10.0), lambda *_: None)
    conn.offer(Frame.text("1"), 0.0)  # suspends: writer 1
    await asyncio.sleep(0)
    sock.after_send = lambda: conn.offer(Frame.text("2"), 0.0)  # suspends: writer 2
    sock.gates[0].set_result(None)
    for _ in range(3):
        await asyncio.sleep(0)
    assert conn.writing
    conn.offer(Frame.text("3"), 0.0)  # must queue behind writer 2
    await asyncio.sleep(0)
    assert sock.max_in_flight == 1
    conn.begin_close()  # cancels writer 2, which is still tracked
    await asyncio.sleep(0)
    assert sock.in_flight == 0


async def test_a_new_epoch_after_a_replay_is_delivered() -> None:
    """The replay's positions stop at its epoch: the same offsets in a new epoch (the
    stream expired and started again) are new messages, not duplicates."""
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures(), hold=True)
    conn.release_held({"c:alice": (5, "epoch-a")}, 0.0)
    assert conn.deliver(Frame.text("old copy"), 0.0, "c:alice", 5, "epoch-a")
    for offset in (1, 2):
        assert conn.deliver(Frame.text(f"new {offset}"), 0.0, "c:alice", offset, "epoch-b")
    assert sock.texts() == ["new 1", "new 2"]


async def test_a_resumed_client_is_sent_nothing_at_or_before_its_position() -> None:
    """The node's listener may lag behind the position the client resumed at: when it
    catches up, what the client already has is not sent, held during the replay or not."""
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures(), hold=True)
    conn.deliver(Frame.text("held 5"), 0.0, "all", 5, "e")
    conn.deliver(Frame.text("held 7"), 0.0, "all", 7, "e")
    conn.release_held({"all": (6, "e")}, 0.0)  # the client's position: nothing replayed
    for offset in (5, 6, 7, 8):  # the lagging listener catches up, then goes on live
        assert conn.deliver(Frame.text(f"late {offset}"), 0.0, "all", offset, "e")
    assert sock.texts() == ["held 7", "late 8"]


async def test_a_live_connection_is_never_sent_a_sequenced_frame_twice() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures())
    for offset in (1, 2, 2, 1, 3):
        conn.deliver(Frame.text(f"all {offset}"), 0.0, "all", offset, "e")
    conn.deliver(Frame.text("g 1"), 0.0, "g:room", 1, "e")  # another stream: its own
    conn.deliver(Frame.text("unsequenced"), 0.0, "all", None, None)
    conn.deliver(Frame.text("unsequenced"), 0.0, "all", None, None)
    assert sock.texts() == ["all 1", "all 2", "all 3", "g 1", "unsequenced", "unsequenced"]


async def test_flush_passes_a_cancellation_of_its_caller_on() -> None:
    sock = GatedSocket()
    conn = Connection("alice", sock, OutboxLimits(100, None, 10.0), lambda *_: None)
    conn.offer(Frame.text("stuck"), 0.0)  # a writer that waits forever
    deadline = asyncio.get_running_loop().time() + 60.0
    flushing = asyncio.create_task(conn.flush(deadline))
    await asyncio.sleep(0)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    conn.begin_close()


async def test_frames_held_during_a_replay_count_against_the_outbox_bounds() -> None:
    """Live frames held while a replay runs are the outbox in waiting: past max_queue_size
    frames (or its bytes) the client is too slow, as with a full outbox. Before, they were
    held without bound and out of the memory estimate."""
    failures = Failures()
    conn = Connection("alice", FakeSocket(), OutboxLimits(4, None, BOUND), failures, hold=True)
    for offset in range(1, 5):
        assert conn.deliver(Frame.text(f"held {offset}"), 0.0, "all", offset, "e")
    assert failures.codes == []
    assert conn.memory_estimate() >= 4 * len("held 1")
    assert not conn.deliver(Frame.text("one too many"), 0.0, "all", 5, "e")
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    by_bytes = Failures()
    heavy = Connection("bob", FakeSocket(), OutboxLimits(100, 10, BOUND), by_bytes, hold=True)
    assert heavy.deliver(Frame.text("12345"), 0.0, "all", 1, "e")
    assert not heavy.deliver(Frame.text("678901"), 0.0, "all", 2, "e")
    assert by_bytes.codes == [CloseCode.TRY_AGAIN_LATER]


async def test_frames_held_and_released_leave_the_byte_count_as_it_was() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, 100, BOUND), Failures(), hold=True)
    before = conn.memory_estimate()
    for offset in (1, 2, 3):
        conn.deliver(Frame.text(f"held {offset}"), 0.0, "all", offset, "e")
    conn.release_held({}, 0.0)
    await flushed(conn)
    assert sock.texts() == ["held 1", "held 2", "held 3"]
    assert conn.memory_estimate() == before


async def closed_transport() -> asyncio.Transport:
    """A real selector transport closed with data still buffered, whose connection was then
    lost once the buffer drained (as uvicorn's is when the server closes a slow client):
    asyncio's abort() of such a transport raises (its loop is gone, its count of losses 0)."""
    loop = asyncio.get_running_loop()
    lost = asyncio.Event()

    class Lost(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    left, right = socket.socketpair()
    right.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(Lost, left)
    transport.write(b"x" * (8 << 20))  # more than the kernel takes: some stays buffered
    transport.close()  # closes once the buffer drained (connection_lost without a count)
    while not lost.is_set():
        try:
            if not await loop.sock_recv(right, 1 << 20):
                break
        except ConnectionError:
            break
    right.close()
    await lost.wait()
    return transport


async def test_abort_transport_of_a_connection_already_lost_does_nothing() -> None:
    """Seen in a fault campaign (seed 1927547427): a close that raised because the client had
    gone aborted a transport whose connection was lost already; asyncio's abort() then raised
    AttributeError, and the close's settle (presence, groups, hooks) never ran."""
    transport = await closed_transport()
    assert abort_transport(FakeWebSocket(receive=FakeProtocol(transport).receive)) is True


async def test_a_close_that_raises_on_a_lost_connection_still_settles_it() -> None:
    """The connection's bookkeeping ends (its close is reported) although the socket's close
    raised and its transport was gone."""
    from stabilizer import WebSocketConfig, WebSocketConnectionManager

    transport = await closed_transport()
    protocol = FakeProtocol(transport)

    class Gone:
        def __init__(self) -> None:
            self._receive = protocol.receive
            self.application_state = None

        async def send(self, message: object) -> None:
            raise OSError("the client is gone")

        async def close(self, code: int = 1000, reason: str | None = None) -> None:
            raise ConnectionResetError("the client is gone")

    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=3600.0,
                                                         heartbeat_timeout=7200.0))
    await manager.start()
    ended = asyncio.Event()
    manager.on_disconnect(lambda *args: ended.set())
    try:
        await manager.connect("c1", Gone())
        await manager.disconnect("c1", code=1001)
        await asyncio.wait_for(ended.wait(), 10)
        assert manager.get_connection_count() == 0
    finally:
        await manager.graceful_shutdown(timeout=1.0)
