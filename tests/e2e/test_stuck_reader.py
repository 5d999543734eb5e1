"""A client that stops reading for good (its TCP window closed, a frame half written) is cut
off under every uvicorn WebSocket implementation: once its write or its heartbeat times
out, or the application disconnects it, the close frame cannot go out, and the transport
is aborted within close_timeout.

Under the legacy `websockets` implementation the send the writer had started was
abandoned without cancelling the drain it waited on (connection/stepping.py steps it by
hand, and a Task would have cancelled that future); the close then failed on the
library's own check of that future, the failure read as "peer gone", and the socket, its
handler and its send buffer stayed for as long as the peer kept TCP open."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.e2e.test_prepared_frames import joined, make_app
from tests.integration.test_emitter import until
from tests.support.inproc_uvicorn import IMPLS, served

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HEARTBEAT = {"heartbeat_interval": 0.5, "heartbeat_timeout": 0.5}
BIG = 8 << 20  # a frame no kernel buffer here takes whole


@pytest.mark.parametrize("trigger", ["write_timeout", "disconnect", "heartbeat"])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_client_that_stops_reading_is_aborted(
        ws: str, trigger: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: dict[str, Any] = HEARTBEAT if trigger == "heartbeat" else QUIET
    manager = WebSocketConnectionManager(WebSocketConfig(
        write_timeout=1.0 if trigger == "write_timeout" else 60.0, close_timeout=1.0,
        max_queue_size=100_000, max_message_size=2 * BIG, **settings))
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "stuck", receive_buffer=4096)  # and never reads again
        try:
            conn = manager.get_connection("stuck")
            assert conn is not None
            transport = conn.socket._receive.__self__.transport  # uvicorn's protocol's
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await manager.send_to_client("stuck", "x" * BIG)
            await manager.send_to_client("stuck", "after")  # waits behind the big one
            assert conn.writing
            if trigger == "disconnect":
                await manager.disconnect("stuck", code=4321, reason="bye")

            async def aborted() -> bool:
                return bool(transport.is_closing())

            await until(aborted, timeout=15.0)  # (a timeout, then close_timeout, then abort)
            assert manager.get_connection("stuck") is None
        finally:
            await client.aclose()


def server_socket(conn: Any) -> Any:
    """The server's end of the TCP connection of `conn` (its fileno is -1 once closed)."""
    return conn.socket._receive.__self__.transport.get_extra_info("socket")


async def closed(sock: Any) -> bool:
    return bool(sock.fileno() == -1)


@pytest.mark.parametrize("trigger", ["disconnect", "shutdown"])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_close_frame_stuck_behind_unread_data_ends_the_tcp_connection(
        ws: str, trigger: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client stops reading once a little data waits in the server's transport (below
    its high-water mark, so nothing waits on a drain): under websockets-sansio and wsproto
    the close frame went into that buffer, the close "succeeded", and the server held the
    TCP connection (its socket out of the pool, its send buffer full) for as long as the
    peer kept it open, and a shutdown never let the process exit."""
    manager = WebSocketConnectionManager(WebSocketConfig(close_timeout=0.5, **QUIET))
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "stuck", receive_buffer=4096)
        client.writer.transport.pause_reading()  # and never reads again
        try:
            conn = manager.get_connection("stuck")
            assert conn is not None
            sock = server_socket(conn)
            transport = conn.socket._receive.__self__.transport

            async def written() -> bool:
                return not conn.outbox and not conn.writing

            for _ in range(100_000):  # until the kernel buffers are full: data waits here
                await manager.send_to_client("stuck", "y" * 8000)
                await until(written)
                if transport.get_write_buffer_size():
                    break
            assert 0 < transport.get_write_buffer_size() < 65_536
            if trigger == "disconnect":
                await manager.disconnect("stuck", code=4321, reason="bye")
            else:
                report = await manager.graceful_shutdown(timeout=60.0)
                assert report.failed_count == 1  # its close frame never went out
            await until(lambda: closed(sock), timeout=15.0)  # a hang guard
            assert manager.get_connection("stuck") is None
        finally:
            await client.aclose()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("trigger", ["disconnect", "shutdown"])
async def test_a_close_the_legacy_server_will_not_give_up_is_cut_at_close_timeout(
        trigger: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that reads but never answers the close frame: the legacy implementation's
    close() swallows the cancellation of a timeout and goes on waiting for the closing
    handshake (here as long as that server's own close_timeout, made an hour), so the
    close held its cleanup slot, and a shutdown, until then."""
    manager = WebSocketConnectionManager(WebSocketConfig(close_timeout=0.5, **QUIET))
    async with served(make_app(manager), "websockets", monkeypatch) as server:
        client = await joined(server, "mute")
        try:
            conn = manager.get_connection("mute")
            assert conn is not None
            conn.socket._receive.__self__.close_timeout = 3600.0  # the server's own bound
            sock = server_socket(conn)
            async with asyncio.timeout(15.0):  # a hang guard
                if trigger == "disconnect":
                    await manager.disconnect("mute", code=4321, reason="bye")
                else:
                    report = await manager.graceful_shutdown(timeout=60.0)
                    assert report.failed_count == 1
                await until(lambda: closed(sock))
        finally:
            await client.aclose()
