"""Prepared frames against a real uvicorn of each WebSocket implementation: the bytes a client
reads, which frames took the prepared write and which the server's ASGI send."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.connection.transports import PreparedWriter, prepared_writer
from stabilizer.fastapi import lifespan, session
from stabilizer.pure.framing import data_frame
from tests.support.inproc_uvicorn import IMPLS, LEGACY_WARNS, Served, served
from tests.support.raw_ws import RawClient

pytestmark = pytest.mark.e2e

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


def make_app(manager: WebSocketConnectionManager, wrap_send: bool = False,
             received: asyncio.Queue[str | bytes] | None = None) -> Any:
    """A FastAPI app: /ws/{client_id} holds a session until the client leaves, putting the
    application messages it yields in `received`."""
    app = FastAPI(lifespan=lifespan(manager))

    @app.websocket("/ws/{client_id}")
    async def endpoint(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id) as conn:
            async for message in conn:
                if received is not None:
                    received.put_nowait(message)

    if not wrap_send:
        return app
    seen: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def counted(message: Any) -> None:
            seen.append(message["type"])
            await send(message)
        await app(scope, receive, counted)

    counting.seen = seen  # type: ignore[attr-defined]  # the test reads what it saw
    return counting


async def joined(served_: Served, client_id: str, **options: Any) -> RawClient:
    """Connect a raw client and wait for its session frame (it is then admitted)."""
    client = await RawClient.connect(served_.port, f"/ws/{client_id}", **options)
    async with asyncio.timeout(BOUND):
        first = await client.frame()
    assert json.loads(client.message(first))["type"] == "session"
    return client


def prepared_of(manager: WebSocketConnectionManager,
                client_id: str) -> tuple[Connection, PreparedWriter]:
    """The connection of `client_id` and a prepared write of its socket."""
    conn = manager.get_connection(client_id)
    assert conn is not None
    prepared = prepared_writer(conn.socket)
    assert prepared is not None
    return conn, prepared

@pytest.fixture
def manager() -> WebSocketConnectionManager:
    """A memory-backed manager; the served app's lifespan starts and stops it."""
    return WebSocketConnectionManager(WebSocketConfig(**QUIET))


@pytest.mark.parametrize("ws", IMPLS)
async def test_a_broadcast_is_framed_once_and_written_without_the_asgi_send(
        ws: str, manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    async with served(make_app(manager), ws, monkeypatch) as server:
        clients = [await joined(server, f"c{i}") for i in range(3)]
        before = len(server.data_sends())
        await manager.broadcast({"text": "héllo"})
        await manager.broadcast(b"\x00\x01binary")
        big = "x" * 70_000  # a 64-bit extended length
        await manager.broadcast(big)
        expected = [data_frame(json.dumps({"text": "héllo"}, separators=(",", ":"),
                                          ensure_ascii=False).encode(), text=True),
                    data_frame(b"\x00\x01binary", text=False),
                    data_frame(big.encode(), text=True)]
        for client in clients:
            async with asyncio.timeout(BOUND):
                got = [(await client.frame()).raw for _ in expected]
            assert got == expected
            await client.aclose()
        assert len(server.data_sends()) == before  # none took the ASGI send


@pytest.mark.parametrize("ws", IMPLS)
async def test_with_permessage_deflate_the_server_compresses_each_frame(
        ws: str, manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    async with served(make_app(manager), ws, monkeypatch, deflate=True) as server:
        compressed = await joined(server, "zip", deflate=True)
        plain = await joined(server, "plain")
        before = len(server.data_sends())
        text = json.dumps({"text": "squeeze " * 40}, separators=(",", ":"))
        for _ in range(2):  # the second frame uses the context the first left
            await manager.broadcast({"text": "squeeze " * 40})
        async with asyncio.timeout(BOUND):
            frames = [await compressed.frame() for _ in range(2)]
            raw = [(await plain.frame()).raw for _ in range(2)]
        for frame in frames:
            assert frame.rsv1
            assert frame.opcode == 1
            assert len(frame.payload) < len(text)
        assert [compressed.message(frame) for frame in frames] == [text.encode()] * 2
        assert raw == [data_frame(text.encode(), text=True)] * 2
        assert len(server.data_sends()) == before + 2  # the compressed socket's two frames
        for client in (compressed, plain):
            await client.aclose()


async def test_a_middleware_around_the_send_sees_every_frame(
        manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(manager, wrap_send=True)
    async with served(app, "websockets-sansio", monkeypatch) as server:
        client = await joined(server, "watched")
        await manager.broadcast({"n": 1})
        async with asyncio.timeout(BOUND):
            frame = await client.frame()
        assert json.loads(frame.payload) == {"n": 1}
        assert app.seen.count("websocket.send") == 2  # the session frame and the broadcast
        assert len(server.data_sends()) == 2
        await client.aclose()


@pytest.mark.parametrize("ws", IMPLS)
async def test_a_paused_transport_queues_in_order_and_loses_nothing(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(
        max_queue_size=10_000, max_memory_per_connection=64 * 1024 * 1024, **QUIET))
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "slow", receive_buffer=4096)
        conn = manager.get_connection("slow")
        assert conn is not None
        transport = conn.socket._receive.__self__.transport  # type: ignore[attr-defined]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=16 * 1024)
        count, body = 300, "y" * 8000
        queued = False
        for n in range(count):
            await manager.send_to_client("slow", f"{n}:{body}")
            queued = queued or bool(conn.outbox)
        assert queued  # the transport paused and frames waited in the outbox
        async with asyncio.timeout(BOUND * 4):
            got = [(await client.frame()).raw for _ in range(count)]
        assert got == [data_frame(f"{n}:{body}".encode(), text=True) for n in range(count)]
        assert server.data_sends()  # the paused transport took the ASGI send
        await client.aclose()


@pytest.mark.parametrize("ws", IMPLS)
async def test_nothing_is_written_after_the_close_handshake_began(
        ws: str, manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "leaving")
        _, prepared = prepared_of(manager, "leaving")
        assert prepared.write(Frame.text("while open")) is True
        async with asyncio.timeout(BOUND):
            assert (await client.frame()).payload == b"while open"
            client.send_close(1000)
            echo = await client.frame()
            assert echo.opcode == 8
            assert prepared.write(Frame.text("after close")) is False
            assert await client.at_eof()
        await client.aclose()


# (uvicorn's legacy implementation is left out: its send of a close returns only once the
# closing handshake and the TCP connection ended)
@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
async def test_nothing_is_written_once_the_server_sent_its_close(
        ws: str, manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    # The application's close frame is out and the client has not answered it: the
    # transport is still open, the server's connection no longer is.
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "closing")
        conn, prepared = prepared_of(manager, "closing")
        await conn.socket.send({"type": "websocket.close", "code": 1000, "reason": ""})
        # at once, before the session hears of it and the transport is closed
        assert not prepared.server.transport.is_closing()
        assert prepared.write(Frame.text("after the server's close")) is False
        assert prepared.closed()
        async with asyncio.timeout(BOUND):
            assert (await client.frame()).opcode == 8  # the close frame, nothing after it
        client.send_close(1000)
        await client.aclose()


@pytest.mark.parametrize("ws", IMPLS)
async def test_heartbeat_pings_are_prepared_frames(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=0.2,
                                                         heartbeat_timeout=30.0))
    async with served(make_app(manager), ws, monkeypatch) as server:
        clients = [await joined(server, f"p{i}") for i in range(2)]
        before = len(server.data_sends())
        pings = []
        async with asyncio.timeout(BOUND):
            for client in clients:
                pings.append(await client.frame())
        for ping in pings:
            body = json.loads(ping.payload)
            assert body["type"] == "ping"
            assert ping.raw == data_frame(ping.payload, text=True)
        assert len(server.data_sends()) == before  # no ping took the ASGI send
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize(("ws", "below"), [("websockets-sansio", True), ("wsproto", True),
                                            pytest.param("websockets", False, marks=LEGACY_WARNS)])
async def test_pongs_are_taken_where_the_server_reads_them(
        ws: str, below: bool, manager: WebSocketConnectionManager,
        monkeypatch: pytest.MonkeyPatch) -> None:
    received: asyncio.Queue[str | bytes] = asyncio.Queue()
    async with served(make_app(manager, received=received), ws, monkeypatch) as server:
        client = await joined(server, "answering")
        async with asyncio.timeout(BOUND):
            for pong in ("pong", '{"type":"pong"}'):
                rtt = asyncio.create_task(manager.ping("answering"))
                ping = await client.frame()
                assert json.loads(ping.payload)["type"] == "ping"
                client.send_text(pong)
                assert await rtt >= 0.0  # the pong answered the ping
        assert manager.stats.pongs == 2
        # taken below the application, its pongs never reached the ASGI receive
        assert len(server.data_receives()) == (0 if below else 2)
        async with asyncio.timeout(BOUND):
            # a pong in two fragments, then an application message: both reach the app
            rtt = asyncio.create_task(manager.ping("answering"))
            await client.frame()
            client.send_frame(0x1, b"po", fin=False)
            client.send_frame(0x0, b"ng")
            await rtt
            client.send_text("pong?")
            assert await received.get() == "pong?"  # the only message the session yields
        assert [m.get("text") for m in server.data_receives()][-2:] == ["pong", "pong?"]
        assert manager.stats.pongs == 3
        await client.aclose()
