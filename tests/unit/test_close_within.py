"""close_within: a close frame goes out within its bound, or the TCP connection is dropped,
whatever the server's close does with a cancellation or with its buffer."""

from __future__ import annotations

import asyncio

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.connection.closer import close_within
from tests.support.fakes import FakeSocket

GUARD = 10.0  # a hang guard: each close here is bounded by far less


class Transport:
    """A transport whose buffer holds `buffered` bytes until it is aborted."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.aborted = asyncio.Event()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.buffered = 0
        self.aborted.set()


class Server:
    """What a Starlette WebSocket's receive is bound to: the server's protocol."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def receive(self) -> None: ...


class Stubborn(FakeSocket):
    """A socket whose close, as websockets' legacy one, catches the cancellation of a
    timeout and goes on waiting for a closing handshake that never ends."""

    def __init__(self, transport: Transport) -> None:
        super().__init__("stubborn")
        self._receive = Server(transport).receive
        self.application_state = None
        self.handshake: asyncio.Future[None] | None = None

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.handshake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(self.handshake)
        except asyncio.CancelledError:
            await asyncio.shield(self.handshake)  # the first cancellation is swallowed


class Buffering(FakeSocket):
    """A socket whose close, as uvicorn's websockets-sansio and wsproto ones, returns once
    its frame is in the transport's buffer (behind `transport.buffered` bytes)."""

    def __init__(self, transport: Transport) -> None:
        super().__init__("buffering")
        self._receive = Server(transport).receive


async def test_a_close_that_swallows_its_cancellation_is_cut_and_aborted() -> None:
    transport = Transport()
    socket = Stubborn(transport)
    async with asyncio.timeout(GUARD):
        assert await close_within(socket, 1000, "bye", 0.05) is False
    assert transport.aborted.is_set()
    assert socket.handshake is not None
    socket.handshake.set_result(None)  # (the abort ends the server's handshake)


async def test_a_close_frame_left_in_the_buffer_is_aborted_once_the_bound_passes() -> None:
    transport = Transport(buffered=1791)
    socket = Buffering(transport)
    assert await close_within(socket, 1000, "bye", 0.05) is False  # not out yet
    assert socket.closed == (1000, "bye")
    async with asyncio.timeout(GUARD):
        await transport.aborted.wait()


async def test_a_close_frame_that_left_is_a_clean_close() -> None:
    transport = Transport()
    assert await close_within(Buffering(transport), 1000, "bye", 0.05) is True
    assert not transport.aborted.is_set()


async def test_a_stubborn_close_holds_neither_the_release_nor_a_cleanup_slot() -> None:
    """Under the legacy implementation the node's close sat in the socket's close for as
    long as the server's own closing handshake took, holding its cleanup slot and the
    disconnect() that awaited it."""
    manager = WebSocketConnectionManager(WebSocketConfig(
        heartbeat_interval=3600.0, heartbeat_timeout=7200.0, close_timeout=0.05,
        max_concurrent_cleanup=1))
    await manager.start()
    stubborn, other = Transport(), Transport()
    sockets = [Stubborn(stubborn), Stubborn(other)]
    try:
        await manager.connect("a", sockets[0])
        await manager.connect("b", sockets[1])
        async with asyncio.timeout(GUARD):
            await manager.disconnect("a", code=1000)
            await manager.disconnect("b", code=1000)  # waited for a's slot
        assert stubborn.aborted.is_set()
        assert other.aborted.is_set()
        assert manager.get_connection_count() == 0
    finally:
        for socket in sockets:  # (the abort ends the server's handshake)
            if socket.handshake is not None and not socket.handshake.done():
                socket.handshake.set_result(None)
        await manager.graceful_shutdown(timeout=1.0)
