"""Load generator: one process holding many WebSocket clients that count what they receive.

Raw asyncio protocols rather than a client library: a client costs one small object, and a
received frame a few microseconds, so four generators keep up with one server on two cores.
Server frames are parsed by hand (they are never masked); client frames are precomputed and
masked with a zero key, which servers accept.

Every frame is counted by kind:

* ``bcast``: a broadcast (text starting with ``b``; Socket.IO: an event packet ``42...``);
* ``ping``: a heartbeat ping (text JSON whose "type" is "ping"; Socket.IO: ``2``), answered
  at once with ``pong`` (Socket.IO: ``3``); WebSocket PING control frames are answered too;
* ``other``: anything else.

The controller talks JSON lines: one command on stdin, one reply on stdout. Commands:
``connect`` (port, paths, mode, concurrency, timeout; ``latencies``: also return each
client's handshake time; ``sources``: loopback addresses to bind the clients' sockets to, in
turn, so that more clients than one address has ephemeral ports can connect; the reply
counts the clients opened from each), ``stats`` (``bcast_at``: CLOCK_MONOTONIC time of the
last broadcast received), ``mark``, ``close``, ``quit``. The process exits on ``quit``,
when stdin closes, or after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from typing import Any, Final

from bench._common import HOST, raise_nofile_limit

PONG_FRAME: Final = b"\x81\x84\x00\x00\x00\x00pong"
EIO_PONG_FRAME: Final = b"\x81\x81\x00\x00\x00\x003"
SIO_CONNECT_FRAME: Final = b"\x81\x82\x00\x00\x00\x0040"
CLOSE_FRAME: Final = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # close 1000
_MAX_HEAD: Final = 16384

OP_TEXT: Final = 1
OP_BINARY: Final = 2
OP_CLOSE: Final = 8
OP_PING: Final = 9


class Counters:
    """Frames received by every client of this process, by kind."""

    __slots__ = ("bcast", "bcast_at", "bytes", "closed", "lost", "other", "ping")

    def __init__(self) -> None:
        self.bcast = 0
        self.bcast_at = 0.0  # time.monotonic() of the last broadcast frame
        self.ping = 0
        self.other = 0
        self.bytes = 0
        self.closed = 0  # close frames received from the server
        self.lost = 0  # connections that ended while we still held them


class Client(asyncio.Protocol):
    """One WebSocket client connection."""

    __slots__ = ("buf", "counters", "head", "is_open", "mode", "pings", "ready",
                 "request", "transport")

    def __init__(self, request: bytes, mode: str, counters: Counters,
                 ready: asyncio.Future[None]) -> None:
        self.request = request
        self.mode = mode
        self.counters = counters
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""
        self.buf = b""
        self.is_open = False
        self.pings = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_open:
            self.counters.lost += 1
        self.is_open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost in handshake: {exc}"))

    def close(self) -> None:
        """Send a close frame and drop the connection (no wait for the server's reply)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.is_open = False
            transport.write(CLOSE_FRAME)
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                if len(head) > _MAX_HEAD:
                    self._fail("handshake response too long")
                return
            status = head[: head.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self._fail(f"handshake refused: {status.decode('latin-1')}")
                return
            self.head = None
            self.is_open = True
            if self.mode == "ws":
                self.ready.set_result(None)
            data = head[end + 4:]
            if not data:
                return
        buf = self.buf + data if self.buf else data
        self.counters.bytes += len(data)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                header = 10
            start = pos + header
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode in (OP_TEXT, OP_BINARY):
                self._message(buf, start, end)
            elif opcode == OP_PING:
                self._pong_control(buf[start:end])
            elif opcode == OP_CLOSE:
                self.counters.closed += 1
                self.close()
                return
            pos = end
        self.buf = buf[pos:] if pos < size else b""

    def _message(self, buf: bytes, start: int, end: int) -> None:
        first = buf[start] if start < end else 0
        counters = self.counters
        if self.mode == "ws":
            if first == 0x62:  # b"b"
                counters.bcast += 1
                counters.bcast_at = time.monotonic()
            elif first == 0x7B and b'"ping"' in buf[start:start + 32]:  # b"{"
                counters.ping += 1
                self.pings += 1
                self._write(PONG_FRAME)
            else:
                counters.other += 1
            return
        # Socket.IO over engine.io 4
        if first == 0x34 and end - start > 1 and buf[start + 1] == 0x32:  # b"42"
            counters.bcast += 1
            counters.bcast_at = time.monotonic()
        elif first == 0x32 and end - start == 1:  # b"2": engine.io ping
            counters.ping += 1
            self.pings += 1
            self._write(EIO_PONG_FRAME)
        elif first == 0x30:  # b"0": engine.io open; join the default namespace
            self._write(SIO_CONNECT_FRAME)
        elif first == 0x34 and end - start > 1 and buf[start + 1] == 0x30:  # b"40"
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            counters.other += 1

    def _pong_control(self, payload: bytes) -> None:
        if len(payload) <= 125:
            self._write(bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload)

    def _write(self, frame: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()


class Generator:
    """All clients of this process and the commands the controller sends.

    Subclasses may use another client class and answer more commands (``command``).
    """

    client_class: type[Client] = Client

    def __init__(self) -> None:
        self.counters = self.make_counters()
        self.clients: list[Client] = []
        self.marks: list[int] = []

    def make_counters(self) -> Counters:
        return Counters()

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """Answer a command this class does not know (subclasses add their own)."""
        return {"error": f"unknown command {name!r}"}

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        port = int(cmd["port"])
        mode = str(cmd.get("mode", "ws"))
        timeout = float(cmd.get("timeout", 30.0))
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
        sources = [str(addr) for addr in cmd.get("sources") or ()]
        by_source = dict.fromkeys(sources, 0)
        errors: list[str] = []
        latencies: list[float] = []  # seconds from TCP connect to the 101, per client
        started = time.monotonic()

        async def one(index: int, path: str) -> bool:
            source = sources[index % len(sources)] if sources else None
            async with gate:
                for attempt in range(3):
                    try:
                        opened = time.monotonic()
                        await self._open(port, path, mode, timeout, source)
                        if source is not None:
                            by_source[source] += 1
                        latencies.append(time.monotonic() - opened)
                        return True
                    except (OSError, TimeoutError) as exc:
                        if attempt == 2 and len(errors) < 5:
                            errors.append(f"{path}: {type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.05 * (attempt + 1))
                return False

        results = await asyncio.gather(*(one(i, path) for i, path in enumerate(cmd["paths"])))
        return {
            "connected": sum(results),
            "failed": len(results) - sum(results),
            "errors": errors,
            "seconds": time.monotonic() - started,
            **({"by_source": by_source} if sources else {}),
            **({"latencies": [round(t, 6) for t in latencies]} if cmd.get("latencies") else {}),
        }

    async def _open(self, port: int, path: str, mode: str, timeout: float,
                    source: str | None = None) -> None:
        """Open one client; `source`: the local address its socket is bound to."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
        client = self.client_class(request, mode, self.counters, ready)
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: client, HOST, port,
                local_addr=(source, 0) if source is not None else None)
            try:
                await ready
            except BaseException:
                if client.transport is not None:
                    client.transport.abort()
                raise
        self.clients.append(client)

    def stats(self, light: bool = False) -> dict[str, Any]:
        counters = self.counters
        totals = {
            "bcast": counters.bcast,
            "ping": counters.ping,
            "other": counters.other,
            "bytes": counters.bytes,
            "closed": counters.closed,
            "lost": counters.lost,
            "bcast_at": counters.bcast_at,
        }
        if light:
            return totals
        since_mark = [
            c.pings - (self.marks[i] if i < len(self.marks) else 0)
            for i, c in enumerate(self.clients) if c.is_open
        ]
        return {
            **totals,
            "open": len(since_mark),
            "ping_min": min(since_mark, default=0),
            "ping_max": max(since_mark, default=0),
        }

    def mark(self) -> dict[str, Any]:
        self.marks = [c.pings for c in self.clients]
        return {"marked": len(self.marks)}

    async def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.close()
        count = len(self.clients)
        self.clients.clear()
        self.marks = []
        await asyncio.sleep(0.05)
        return {"closed": count}


async def serve(max_seconds: float, generator: Generator | None = None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    generator = generator if generator is not None else Generator()
    deadline = loop.time() + max_seconds
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                line = await reader.readline()
        except TimeoutError:
            print(f"loadgen {os.getpid()}: lifetime reached", file=sys.stderr)
            break
        if not line:
            break
        cmd = json.loads(line)
        name = cmd.get("cmd")
        reply: dict[str, Any]
        if name == "connect":
            reply = await generator.connect(cmd)
        elif name == "stats":
            reply = generator.stats(bool(cmd.get("light")))
        elif name == "mark":
            reply = generator.mark()
        elif name == "close":
            reply = await generator.close()
        elif name == "quit":
            await generator.close()
            sys.stdout.write('{"bye": true}\n')
            sys.stdout.flush()
            break
        else:
            reply = await generator.command(str(name), cmd)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await generator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds))


if __name__ == "__main__":
    main()
