"""A write that finds the socket closed by the client: a connection whose reader reads the
client's close (a session's) takes no more frames and is left to that reader, which
reports the client's own close; 1011 stays for a write that failed otherwise, and for
connections nobody reads the close of (the seed's connect())."""

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


async def test_a_send_that_finds_the_client_gone_is_refused_and_not_failed() -> None:
    socket = FakeSocket(error=ConnectionResetError("peer gone"))
    failures = Failures()
    conn = read(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is False
    assert failures.calls == []
    assert conn.client_gone
    assert conn.is_open  # its reader releases it
    assert conn.offer(Frame.text("b"), now=0.0) is False
    assert socket.started == 1  # refused without another send


async def test_a_queued_send_that_finds_the_client_gone_drops_the_outbox() -> None:
    socket = FakeSocket(blocked=True, error=WebSocketDisconnect(1006))
    failures = Failures()
    conn = read(socket, failures)
    assert conn.offer(Frame.text("a"), now=0.0) is True  # suspended: the writer finishes it
    assert conn.offer(Frame.text("b"), now=0.0) is True
    socket.gate.set()
    async with asyncio.timeout(BOUND):
        await socket.unwound.wait()
        while conn.writing:
            await asyncio.sleep(0)
    assert failures.calls == []
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
