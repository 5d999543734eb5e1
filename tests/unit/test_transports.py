"""Prepared frames without a server: the framing against websockets' and wsproto's own, and
which sockets get no prepared write (their frames take the ASGI send)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from starlette.websockets import WebSocket
from websockets.frames import Frame as WebsocketsFrame
from websockets.frames import Opcode
from wsproto.frame_protocol import FrameProtocol

from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection, OutboxLimits
from stabilizer.connection.pongs import PongWatch
from stabilizer.connection.sockets import AsgiMessage, Frame
from stabilizer.connection.transports import SANSIO, prepared_writer
from stabilizer.pure.framing import data_frame, text_frame

SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]


@pytest.mark.parametrize("size", SIZES)
def test_frames_are_the_bytes_websockets_and_wsproto_write(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    text = "é" * (size // 2)
    for opcode, body, ours in ((Opcode.BINARY, payload, data_frame(payload, text=False)),
                               (Opcode.TEXT, text.encode(), text_frame(text))):
        assert ours == WebsocketsFrame(opcode, body).serialize(mask=False)
        protocol = FrameProtocol(client=False, extensions=[])
        sent = body if opcode is Opcode.BINARY else text
        assert ours == bytes(protocol.send_data(sent, fin=True))


def test_a_frame_is_framed_once_for_all_its_recipients() -> None:
    frame = Frame.text("hé")
    assert frame.wire() is frame.wire()
    assert frame.wire() == text_frame("hé")
    assert Frame.binary(b"\x00").wire() == b"\x82\x01\x00"


def test_a_lone_surrogate_cannot_be_framed() -> None:
    with pytest.raises(UnicodeEncodeError):
        Frame.text("\ud800").wire()


class UnknownServer:
    """An ASGI server stabilizer has no adapter for."""

    def __init__(self) -> None:
        self.sent: list[AsgiMessage] = []
        self.transport = object()

    async def receive(self) -> AsgiMessage:
        return {"type": "websocket.connect"}

    async def send(self, message: AsgiMessage) -> None:
        self.sent.append(message)


def websocket_of(server: Any, send: Any = None) -> WebSocket:
    scope = {"type": "websocket", "path": "/", "headers": [], "query_string": b""}
    return WebSocket(scope, server.receive, send or server.send)


def _fail(conn: Connection, code: CloseCode, reason: str) -> None:
    raise AssertionError(f"failed: {code} {reason}")


def _never(conn: Connection) -> None:
    raise AssertionError("no pong was expected")


def conn_of(socket: WebSocket) -> Connection:
    return Connection("c", socket, OutboxLimits(10, None, 1.0), _fail)


async def test_an_unknown_server_takes_the_asgi_send() -> None:
    server = UnknownServer()
    socket = websocket_of(server)
    await socket.accept()
    assert prepared_writer(socket) is None
    assert PongWatch(_never).watch(conn_of(socket)) is False
    conn = Connection("c", socket, OutboxLimits(10, None, 1.0), _fail)
    assert conn.offer(Frame.text("hello"), 0.0)
    assert server.sent[-1] == {"type": "websocket.send", "text": "hello"}


def test_a_server_like_uvicorns_but_built_otherwise_gets_no_adapter() -> None:
    # the name of uvicorn's class, not its attributes: another release, say
    impostor = type("WebSocketsSansIOProtocol", (UnknownServer,), {
        "__module__": "uvicorn.protocols.websockets.websockets_sansio_impl"})
    server = impostor()
    assert prepared_writer(websocket_of(server)) is None
    assert PongWatch(_never).watch(conn_of(websocket_of(server))) is False
    assert "handle_text" not in vars(server)


def test_a_subclass_of_a_uvicorn_protocol_gets_no_adapter() -> None:
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    class Custom(WSProtocol):
        pass

    server = Custom.__new__(Custom)  # never connected: only its type is looked at
    assert prepared_writer(websocket_of(server)) is None


def test_a_wrapped_send_gets_no_adapter() -> None:
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    server = WSProtocol.__new__(WSProtocol)

    async def middleware_send(message: AsgiMessage) -> None:
        await server.send(message)  # type: ignore[arg-type]

    assert prepared_writer(websocket_of(server, middleware_send)) is None


def test_sockets_that_are_not_starlettes_get_no_adapter() -> None:
    assert prepared_writer(UnknownServer()) is None


class SansioLike:
    """What the pong taker reads of uvicorn's websockets-sansio protocol."""

    def __init__(self) -> None:
        self.close_sent = False
        self.handed: list[bytes] = []

    def handle_text(self, event: Any) -> None:
        self.handed.append(bytes(event.data))


class TextEvent:
    def __init__(self, data: bytes | bytearray, fin: bool = True) -> None:
        self.data = data
        self.fin = fin


class SansioWriter:
    """A prepared writer of a SansioLike server (the pong watch finds the server in it)."""

    kind = SANSIO

    def __init__(self, server: SansioLike) -> None:
        self.server = server

    def write(self, frame: Frame) -> bool:
        return False


def sansio_conn(server: SansioLike) -> Connection:
    conn = conn_of(websocket_of(UnknownServer()))
    conn._prepared = SansioWriter(server)
    return conn


def test_the_pong_taker_answers_whole_pongs_and_hands_on_the_rest() -> None:
    server = SansioLike()
    conn = sansio_conn(server)
    answered: list[Connection] = []
    assert PongWatch(answered.append).watch(conn) is True
    for data in (b"pong", bytearray(b'{"type":"pong"}')):
        server.handle_text(TextEvent(data))
    server.handle_text(TextEvent(b"pong", fin=False))  # the start of a fragmented message
    server.handle_text(TextEvent(b"pongs"))
    server.handle_text(TextEvent(b'{"type": "pong"}'))  # a pong the session recognises
    assert answered == [conn, conn]
    assert server.handed == [b"pong", b"pongs", b'{"type": "pong"}']
    server.close_sent = True
    server.handle_text(TextEvent(b"pong"))
    conn.begin_close()
    server.close_sent = False
    server.handle_text(TextEvent(b"pong"))  # a closing connection: the application reads it
    assert answered == [conn, conn]
    assert server.handed[-2:] == [b"pong", b"pong"]


def test_a_closing_connection_gives_its_server_the_method_back_and_is_freed_at_once() -> None:
    """The taker the server holds refers to the connection, whose socket refers to the
    server: a cycle until unwatch(), after which a closed connection needs no collector."""
    server = SansioLike()
    conn = sansio_conn(server)
    watch = PongWatch(_never)
    assert watch.watch(conn) is True
    assert "handle_text" in vars(server)
    gone = weakref.ref(conn)
    conn.begin_close()
    assert watch.watch(conn) is False  # a closing connection takes no pongs
    watch.unwatch(conn)
    assert "handle_text" not in vars(server)
    server.handle_text(TextEvent(b"pong"))
    assert server.handed == [b"pong"]
    collecting = gc.isenabled()
    gc.disable()
    try:
        del conn
        assert gone() is None
    finally:
        if collecting:
            gc.enable()


def test_unwatch_leaves_a_method_another_connection_installed() -> None:
    server = SansioLike()
    first, second = sansio_conn(server), sansio_conn(server)
    watch = PongWatch(_never)
    assert watch.watch(first) is True
    assert watch.watch(second) is True  # the server's newer connection (a test's shortcut)
    watch.unwatch(first)
    assert vars(server)["handle_text"].__self__ is second


class SansioElsewhere:
    """A release of the server that keeps its close state under another name."""

    def __init__(self) -> None:
        self.closing = False

    def handle_text(self, event: Any) -> None:
        """Hands a message to the application."""


def test_a_server_release_without_what_the_taker_reads_keeps_its_pongs() -> None:
    """What a server class offers is looked at once per class (not per connection): every
    connection of a class without it keeps its pongs, and another class is looked at."""
    watch = PongWatch(_never)
    servers = [SansioElsewhere(), SansioElsewhere()]
    assert [watch.watch(sansio_conn(server)) for server in servers] == [False, False]  # type: ignore[arg-type]
    assert all("handle_text" not in vars(server) for server in servers)
    assert watch.watch(sansio_conn(SansioLike())) is True  # another class: looked at
