"""Load generator that also measures end-to-end latency: ``bench.loadgen`` plus send stamps.

Messages sent by ``bench.replicas`` carry the sender's clock in their text:
``b<seq>:<monotonic_ns>:xxxx`` (Socket.IO: ``42["msg","b<seq>:<ns>:xxx"]``). CLOCK_MONOTONIC
is one clock for every process of the machine, so ``time.monotonic_ns()`` when a frame is
parsed here, minus the stamp, is the latency from the sender's library call to the client.
Frames are counted exactly as ``bench.loadgen`` counts them (``bcast``); stamped ones also
record their latency and the time the last one arrived.

Extra commands (JSON lines on stdin, like ``bench.loadgen``): ``lat`` returns the latencies
recorded since the last ``lat`` with ``"reset": true`` (in µs) and the arrival time of the
last stamped frame (``last_ns``); ``reset`` forgets them. The reply to ``connect`` also
holds ``connect_us``: for every client it connected, the µs from before its TCP connect until
it was ready.

Two more connect modes (``bench.identity``), where a client is ready only once it received
the server's first text frame (the ``session`` frame), and each entry of ``paths`` is
``[path, first frame text or null]``:

* ``welcome``: a plain client of a server that sends a welcome (``session``) frame;
* ``v2``: protocol v2: the handshake offers ``Sec-WebSocket-Protocol: stabilizer.v2`` and
  the client sends its ``connect`` frame right after the 101. Messages then arrive as
  ``{"type":"message","data":"b<seq>:<ns>:..."}``: the stamp is read inside ``data``.

The first frame counts as ``other``; afterwards these clients count frames like ``ws`` ones.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
from typing import Any, Final

from bench._common import HOST, raise_nofile_limit
from bench.loadgen import Client, Counters, Generator, serve

V2_SUBPROTOCOL: Final = "stabilizer.v2"
#: How a v2 server wraps an application text message (history off).
V2_MESSAGE: Final = b'{"type":"message","data":"'
SESSION_FRAME: Final = b'{"type":"session"'


def client_text_frame(text: str) -> bytes:
    """A masked client text frame (zero masking key: the payload goes as is)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 65536:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class ProbeCounters(Counters):
    """Counters plus the latencies of stamped frames (ns) and the last arrival time."""

    __slots__ = ("last_ns", "lat")

    def __init__(self) -> None:
        super().__init__()
        self.lat: list[int] = []
        self.last_ns = 0


class ProbeClient(Client):
    """A client that reads the send stamp of every counted message."""

    __slots__ = ()

    def _message(self, buf: bytes, start: int, end: int) -> None:
        if end - start > 2 and (buf[start] == 0x62 or buf[start:start + 2] == b"42"):
            first = buf.find(b":", start, end)
            second = buf.find(b":", first + 1, end) if first > 0 else -1
            if second > first + 1:
                try:
                    sent = int(buf[first + 1:second])
                except ValueError:
                    sent = 0
                if sent:
                    now = time.monotonic_ns()
                    counters = self.counters
                    assert isinstance(counters, ProbeCounters)
                    counters.lat.append(now - sent)
                    counters.last_ns = now
        super()._message(buf, start, end)


class GreetedClient(ProbeClient):
    """A ``welcome`` or ``v2`` client: sends its first frame (v2) after the 101 and is ready
    when the server's first text frame (the session frame) arrives."""

    __slots__ = ("first", "wrapped")

    def __init__(self, request: bytes, mode: str, counters: Counters,
                 ready: asyncio.Future[None], first: bytes | None) -> None:
        super().__init__(request, mode, counters, ready)
        self.first = first
        self.wrapped = mode == "v2"

    def data_received(self, data: bytes) -> None:
        handshaking = self.head is not None
        super().data_received(data)
        if handshaking and self.head is None and self.first is not None:  # the 101 came
            self._write(self.first)
            self.first = None

    def _message(self, buf: bytes, start: int, end: int) -> None:
        if not self.ready.done():
            if buf.startswith(SESSION_FRAME, start, end):
                self.counters.other += 1
                self.mode = "ws"  # from here on, frames are counted as a plain client's
                self.ready.set_result(None)
            else:
                self._fail(f"first frame is not a session frame: {buf[start:start + 80]!r}")
            return
        if self.wrapped and buf.startswith(V2_MESSAGE, start, end):
            start += len(V2_MESSAGE)
        super()._message(buf, start, end)


class ProbeGenerator(Generator):
    """Generator whose clients record latencies, and the time every connect took."""

    client_class = ProbeClient

    def __init__(self) -> None:
        super().__init__()
        self.connect_us: list[int] = []

    def make_counters(self) -> Counters:
        return ProbeCounters()

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """As Generator.connect, plus ``connect_us``: per connected client, µs from before its
        TCP connect until it was ready (for ``welcome`` and ``v2``: its first frame came)."""
        self.connect_us = []
        reply = await super().connect(cmd)
        reply["connect_us"] = self.connect_us
        return reply

    async def _open(self, port: int, path: Any, mode: str, timeout: float,
                    source: str | None = None) -> None:
        started = time.monotonic_ns()
        if mode in ("welcome", "v2"):
            await self._open_greeted(port, path, mode, timeout, source)
        else:
            await super()._open(port, path, mode, timeout, source)
        self.connect_us.append((time.monotonic_ns() - started) // 1000)

    async def _open_greeted(self, port: int, path: Any, mode: str, timeout: float,
                            source: str | None = None) -> None:
        target, first = path
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        offer = f"Sec-WebSocket-Protocol: {V2_SUBPROTOCOL}\r\n" if mode == "v2" else ""
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
        frame = client_text_frame(first) if first is not None else None
        client = GreetedClient(request, mode, self.counters, ready, frame)
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

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        counters = self.counters
        assert isinstance(counters, ProbeCounters)
        if name == "lat":
            lat = [value // 1000 for value in counters.lat]  # µs
            reply = {"lat_us": lat, "last_ns": counters.last_ns}
            if cmd.get("reset"):
                counters.lat = []
            return reply
        if name == "reset":
            counters.lat = []
            counters.last_ns = 0
            return {"reset": True}
        return await super().command(name, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, ProbeGenerator()))


if __name__ == "__main__":
    main()
