"""Prepared writes: a frame framed once (``Frame.wire``) and written as is to the transport of
every recipient whose server lets us, instead of through one ASGI send per recipient.

One small adapter per server implementation knows where that server keeps the transport
and the state of the WebSocket connection. It is found once per connection, when the
connection is made (``prepared_writer``), and then, for each frame, checks that the bytes
are exactly what the server's own send would write now:

- the handshake is done and the connection open: no close frame sent or received, the
  transport neither lost nor closing;
- no extension negotiated on this socket: permessage-deflate compresses with a context per
  socket, so only the server's own send can frame it;
- no fragmented message in progress (uvicorn never fragments; checked all the same);
- the transport is not paused over its high-water mark.

These run for every recipient of every frame, so the adapters of websockets-sansio and
wsproto read them in the cheapest form their server allows: what the handshake fixed (the
extensions) once, a flag the server never sets without also changing one already read
(uvicorn's ``close_sent`` and ``disconnected``) not at all, and the server's paused flag
only when data waits in the transport (a transport resumes its server before its buffer is
empty). The legacy implementation's adapter reads each as it is.

When a check fails the adapter writes nothing and the caller takes the ASGI send, which
does whatever the server does (compress, wait for the transport to drain, refuse after a
close); while that send waits, the connection's later frames queue in its outbox in order.
When the server's connection is closed (``closed``: the peer's close came, or the TCP
connection went), the caller takes no send at all: the frame is not delivered, under every
server alike (the legacy one's send would wait for the closing handshake to end, then fail).
``close_code`` tells the code the peer closed with, for a session that does not read it.
Close frames always take the ASGI send: the server must record that it sent one.

The server's state machine need not see the frames written here: in each implementation
below, sending one whole uncompressed data frame changes no state (websockets tracks only a
fragmented message in progress, wsproto likewise), and every write of theirs is one
synchronous ``transport.write`` of whole frames, so ours never lands inside one of theirs.

Known servers: uvicorn's three implementations (``ws="websockets-sansio"``, the default of
``ws="auto"``; ``"websockets"``; ``"wsproto"``). Any other server, a middleware that wraps
the ASGI send, or a release of uvicorn that keeps its state elsewhere gets no adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import Any, Final, Protocol

from stabilizer.connection.sockets import Frame, is_starlette


class PreparedWriter(Protocol):
    """One connection's prepared write (a small slotted object: one per connection)."""

    @property
    def kind(self) -> str:
        """The server's class name (SANSIO, LEGACY, WSPROTO)."""
        ...

    @property
    def server(self) -> Any:
        """The server's object of the connection (as known_server() found it)."""
        ...

    def write(self, frame: Frame) -> bool:
        """Write `frame`'s prepared bytes and return True, or write nothing and return False
        (the caller then sends the frame through the ASGI send, unless closed())."""
        ...

    def closed(self) -> bool:
        """True once the server's connection carries no more data: the peer's close frame
        came (or the server closed it), or the TCP connection is closing or lost. A send
        then fails (or, under the legacy implementation, waits for the closing handshake
        to end, then fails)."""
        ...

    def close_code(self) -> int | None:
        """The code of the close frame the peer sent, as the server received it (the one the
        application's next receive would report); None when none came (or it is unknown)."""
        ...


_UVICORN: Final = "uvicorn.protocols.websockets."
SANSIO: Final = f"{_UVICORN}websockets_sansio_impl.WebSocketsSansIOProtocol"
LEGACY: Final = f"{_UVICORN}websockets_impl.WebSocketProtocol"
WSPROTO: Final = f"{_UVICORN}wsproto_impl.WSProtocol"
# Wrappers between an app and its server that pass every websocket message on unchanged.
_PASS_THROUGH: Final = frozenset({
    ("starlette._exception_handler", "wrap_app_handling_exceptions.<locals>.wrapped_app"
                                     ".<locals>.sender"),
})
_MAX_WRAPPERS: Final = 8


class _Adapter:
    """What every adapter keeps: its connection's server object."""

    __slots__ = ("_server",)
    kind: str  # the server's class name

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def server(self) -> Any:
        """The server object of the connection."""
        return self._server


class _Sansio(_Adapter):
    """uvicorn's websockets-sansio: a websockets ``ServerProtocol`` in ``server.conn``."""

    __slots__ = ("_opened", "_plain", "_protocol", "_transport", "_writable")
    kind = SANSIO

    def __init__(self, server: Any) -> None:
        protocol = server.conn
        super().__init__(server)
        self._protocol = protocol
        self._transport = server.transport
        self._writable = server.writable  # cleared while the transport is paused
        self._opened = type(protocol._state).OPEN
        # negotiated as uvicorn answers the handshake request, before the app runs
        self._plain = not protocol.extensions
        _ = (protocol.state, protocol.expect_continuation_frame, server.close_sent,
             server.disconnected, protocol.close_rcvd)  # an AttributeError: another release

    def write(self, frame: Frame) -> bool:
        # The checks of the module's docstring, each in its cheapest form (this runs for
        # every recipient of a broadcast): the state without its property; uvicorn's
        # close_sent and disconnected are not read, as it sets the first only as the state
        # leaves OPEN or with transport.close(), and the second once the transport closed;
        # the writable event only when data waits in the transport, which resumes a paused
        # server before its buffer is empty.
        protocol, transport = self._protocol, self._transport
        if (protocol._state is not self._opened or transport.is_closing() or not self._plain
                or protocol.expect_continuation_frame
                or (transport.get_write_buffer_size() and not self._writable.is_set())):
            return False
        transport.write(frame.wire())
        return True

    def closed(self) -> bool:
        server = self._server
        return (self._protocol.state is not self._opened or server.close_sent
                or server.disconnected or self._transport.is_closing())

    def close_code(self) -> int | None:
        received = self._protocol.close_rcvd
        return None if received is None else int(received.code)


class _Legacy(_Adapter):
    """uvicorn's websockets (legacy): the server is a websockets legacy protocol itself."""

    __slots__ = ("_closed", "_ended", "_opened", "_transport")
    kind = LEGACY

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self._transport = server.transport
        self._closed = server.closed_event
        states = type(server.state)
        self._opened = states.OPEN
        self._ended = (states.CLOSING, states.CLOSED)  # (it may still be CONNECTING here)
        _ = (server._paused, server._fragmented_message_waiter, server.extensions,
             server.close_rcvd)

    def write(self, frame: Frame) -> bool:
        server, transport = self._server, self._transport
        # transfer_data_task exists once the state is OPEN (connection_open sets both)
        if (server.state is not self._opened or self._closed.is_set() or server._paused
                or server.extensions or server._fragmented_message_waiter is not None
                or server.transfer_data_task.done() or transport.is_closing()):
            return False
        transport.write(frame.wire())
        return True

    def closed(self) -> bool:
        server = self._server
        state = server.state
        return (state in self._ended or self._closed.is_set() or self._transport.is_closing()
                or (state is self._opened and server.transfer_data_task.done()))

    def close_code(self) -> int | None:
        received = self._server.close_rcvd
        return None if received is None else int(received.code)


class _Wsproto(_Adapter):
    """uvicorn's wsproto: a wsproto ``Connection`` once the handshake was accepted."""

    __slots__ = ("_connection", "_events", "_frames", "_opened", "_plain", "_transport",
                 "_writable")
    kind = WSPROTO

    def __init__(self, server: Any) -> None:
        connection = server.conn.connection
        if connection is None:
            raise AttributeError("not accepted by the server yet")
        super().__init__(server)
        self._connection = connection
        self._frames = connection._proto  # the FrameProtocol: extensions, outbound state
        self._transport = server.transport
        self._writable = server.writable
        self._events = server.queue._queue  # the ASGI events the application has yet to read
        self._opened = type(connection._state).OPEN
        self._plain = not self._frames.extensions  # negotiated with the accepted handshake
        _ = (connection.state, self._frames._outbound_opcode, server.close_sent,
             server.disconnected)

    def write(self, frame: Frame) -> bool:
        # As _Sansio.write: uvicorn's wsproto implementation, too, sets close_sent only as
        # the connection leaves OPEN or with transport.close()
        transport = self._transport
        if (self._connection._state is not self._opened or transport.is_closing()
                or not self._plain or self._frames._outbound_opcode is not None
                or (transport.get_write_buffer_size() and not self._writable.is_set())):
            return False
        transport.write(frame.wire())
        return True

    def closed(self) -> bool:
        server = self._server
        return (self._connection.state is not self._opened or server.close_sent
                or server.disconnected or self._transport.is_closing())

    def close_code(self) -> int | None:
        # wsproto keeps no record of the close it received: uvicorn queued it as the
        # disconnect the application reads next (the first one: a lost connection adds one)
        for event in self._events:
            if event.get("type") == "websocket.disconnect":
                code = event.get("code")
                return code if isinstance(code, int) else None
        return None


#: server class -> (the name of its ASGI send method, its adapter)
_ADAPTERS: Final[dict[str, tuple[str, Callable[[Any], PreparedWriter]]]] = {
    SANSIO: ("send", _Sansio),
    LEGACY: ("asgi_send", _Legacy),
    WSPROTO: ("send", _Wsproto),
}


#: server class -> the name of its ASGI send method
_SEND_METHODS: Final = {name: method for name, (method, _) in _ADAPTERS.items()}


def known_server(socket: object) -> tuple[str, Any] | None:
    """(class name, server object) of a Starlette WebSocket served by one of the servers
    named here, the app's messages reaching it unchanged; None for any other socket."""
    if not is_starlette(socket):
        return None
    server = getattr(getattr(socket, "_receive", None), "__self__", None)
    if server is None:
        return None
    name = _known_name(type(server))  # exactly the server's class: a subclass may send otherwise
    if name is None:
        return None
    if not _sends_straight_to(getattr(socket, "_send", None), server, _SEND_METHODS[name]):
        return None  # something between the app and the server sees every message
    return name, server


def _known_name(kind: type) -> str | None:
    """The qualified name of a server class named here, else None (made once per class)."""
    try:
        return _NAMES[kind]
    except KeyError:
        name = f"{kind.__module__}.{kind.__qualname__}"
        found = _NAMES[kind] = name if name in _SEND_METHODS else None
        return found


_NAMES: Final[dict[type, str | None]] = {}  # the server classes seen (a handful)


def prepared_writer(socket: object) -> PreparedWriter | None:
    """The prepared write of an accepted Starlette WebSocket whose server has an adapter
    here; None for every other socket (its frames all take the ASGI send)."""
    found = known_server(socket)
    if found is None:
        return None
    name, server = found
    try:
        return _ADAPTERS[name][1](server)
    except AttributeError:  # another release of the server keeps its state elsewhere
        return None


def _sends_straight_to(send: Any, server: object, method: str) -> bool:
    """True when `send` is `server`'s own ASGI send, possibly behind wrappers known to pass
    every message on unchanged."""
    for _ in range(_MAX_WRAPPERS):
        if getattr(send, "__self__", None) is server:
            return getattr(send, "__func__", None) is getattr(type(server), method, None)
        code = getattr(send, "__code__", None)
        if code is None:
            return False
        try:
            cell = _SEND_CELLS[code]
        except KeyError:
            cell = _SEND_CELLS[code] = _send_cell(send, code)
        if cell is None:
            return False
        send = send.__closure__[cell].cell_contents
    return False


def _send_cell(function: Any, code: CodeType) -> int | None:
    """Where a wrapper known to pass every message on keeps the send it wraps (the index
    of its closure's ``send`` cell); None for any other function."""
    name = (getattr(function, "__module__", None), getattr(function, "__qualname__", None))
    if name not in _PASS_THROUGH or "send" not in code.co_freevars:
        return None
    return code.co_freevars.index("send")


#: a function's code -> the index of its closure's ``send`` cell if it is a wrapper that
#: passes every message on, else None (one entry per kind of wrapper seen: a handful)
_SEND_CELLS: Final[dict[CodeType, int | None]] = {}
