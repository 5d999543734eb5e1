"""A write that finds the socket closed by the client: a connection whose reader may read the
client's close (a session's) takes no more frames and tells its fail handler once, with
``client_gone`` set (services/closing.py leaves it to a reader waiting for the client's next
frame, or releases it with the client's close); 1011 stays for a write that failed
otherwise, and for connections nobody reads the close of (the seed's connect())."""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocketDisconnect

from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection, OutboxLimits
from stabilizer.connection.sockets import Frame
from tests.unit.test_connection import BOUND, Failures, FakeSocket


def read(socket: FakeSocket, failures: Failures) -> Connection:
    """A connection whose reader reads the client's close (as a session does)."""
    return Connection("alice", socket, OutboxLimits(16, None, BOUND), failures,
                      reads_close=True)


async def test_a_send_that_finds_the_client_gone_is_refused_and_told_once() -> None:
    socket = FakeSocket(error=ConnectionResetError("peer gone"))
    failures = Failures(close=False)  # (as for a session that reads: its reader releases it)
    conn = read(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert failures.calls == [(CloseCode.NORMAL, "send failed: ConnectionResetError")]
    assert conn.client_gone
    assert conn.is_open
    assert conn.offer(Frame.text("b"), now=0.0) is False
    assert socket.started == 1  # refused without another send
    assert len(failures.calls) == 1


async def test_a_queued_send_that_finds_the_client_gone_drops_the_outbox() -> None:
    socket = FakeSocket(blocked=True, error=WebSocketDisconnect(1006))
    failures = Failures(close=False)
    conn = read(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is True  # suspended: the writer finishes it
    assert conn.offer(Frame.text("b"), now=0.0) is True
    socket.gate.set()
    async with asyncio.timeout(BOUND):
        await socket.unwound.wait()
        while conn.writing:
            await asyncio.sleep(0)
    assert failures.codes == [CloseCode.NORMAL]
    assert conn.client_gone
    assert (list(conn.outbox), conn.queued_bytes) == ([], 0)
    assert socket.started == 1  # "b" was never sent
    assert conn.offer(Frame.text("c"), now=0.0) is False


async def test_any_other_send_failure_is_the_servers() -> None:
    socket = FakeSocket(error=RuntimeError("broken"))
    failures = Failures()
    conn = read(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert failures.codes == [CloseCode.INTERNAL_ERROR]
    assert not conn.client_gone


async def test_without_a_reader_of_the_close_the_client_gone_fails_with_1011() -> None:
    socket = FakeSocket(error=ConnectionResetError("peer gone"))
    failures = Failures()
    conn = Connection("alice", socket, OutboxLimits(16, None, BOUND), failures)
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert failures.codes == [CloseCode.INTERNAL_ERROR]
