"""The client of ``bench.acks``: one connection of one library, receiving the server's
direct sends and acknowledging those that ask for it.

Kinds, each the library's own client:

* ``raw``: the ``websockets`` library; a reader task answers ``{"id", "data"}`` with
  ``{"ack": id}`` right after handling the message; ``{"data"}`` gets no answer;
* ``stabilizer``: ``stabilizer.client.connect(url, protocol=2)`` read with ``async for``:
  the client acknowledges a message when the loop asks for the next one;
* ``socketio``: ``socketio.AsyncClient`` over the WebSocket transport only, handlers for
  ``oneway`` and ``acked``; the latter returns True, which Socket.IO sends back as the ack.

Handling a message is the same everywhere: parse it (the library does for socketio) and
note its ``seq`` and its latency, this process's ``time.monotonic_ns()`` minus the stamp
``t`` the server wrote into it (CLOCK_MONOTONIC is one clock for every process here).

Driven like ``bench.loadgen`` (whose ``serve`` loop it reuses): JSON lines on stdin, one
reply each on stdout. Commands: ``connect`` (kind, port, stabilizer_path); ``take`` (n,
timeout, latencies): wait until n messages were handled (or timeout seconds passed), then
return and forget what was noted: how many, whether their seqs were exactly 0..n-1, and
(with ``latencies``) each latency in µs; ``close``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any, Final

from bench._common import HOST, raise_nofile_limit
from bench.loadgen import serve
from bench.rpc_client import OneClient, Opener


class Handled:
    """The messages handled since the last ``take``: seq and latency of each."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.latency_us: list[int] = []
        self._more = asyncio.Event()

    def note(self, message: dict[str, int]) -> None:
        self.latency_us.append((time.monotonic_ns() - message["t"]) // 1000)
        self.seqs.append(message["seq"])
        self._more.set()

    async def take(self, n: int, timeout: float, latencies: bool) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.seqs) < n:
                    self._more.clear()
                    await self._more.wait()
        seqs, self.seqs = self.seqs, []
        latency_us, self.latency_us = self.latency_us, []
        return {"count": len(seqs), "in_order": seqs == list(range(n)),
                "complete": sorted(seqs) == list(range(n)),
                **({"latency_us": latency_us} if latencies else {})}


class RawReceiver:
    """The floor: the websockets library and a reader task."""

    def __init__(self, handled: Handled) -> None:
        self._handled = handled
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        from websockets.asyncio.client import connect

        self._ws = await connect(f"ws://{HOST}:{port}/acks")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self._ws:
            frame = json.loads(text)
            self._handled.note(frame["data"])
            if "id" in frame:
                await self._ws.send(json.dumps({"ack": frame["id"]}, separators=(",", ":")))

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class StabilizerReceiver:
    """stabilizer's Python client, protocol v2, read as the README shows."""

    def __init__(self, handled: Handled) -> None:
        self._handled = handled
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        from stabilizer.client import connect

        self._conn = connect(f"ws://{HOST}:{port}/v2", protocol=2)
        await self._conn.start()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self._conn:  # the next step acknowledges the previous message
            self._handled.note(json.loads(text))

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class SocketIOReceiver:
    """python-socketio's AsyncClient; ``acked``'s return value is the ack."""

    def __init__(self, handled: Handled) -> None:
        self._handled = handled
        self._sio: Any = None

    async def open(self, port: int) -> None:
        import socketio

        sio = socketio.AsyncClient(reconnection=False)

        async def oneway(message: dict[str, int]) -> None:
            self._handled.note(message)

        async def acked(message: dict[str, int]) -> bool:
            self._handled.note(message)
            return True

        sio.on("oneway", oneway)
        sio.on("acked", acked)
        self._sio = sio
        await sio.connect(f"http://{HOST}:{port}", transports=["websocket"])

    async def aclose(self) -> None:
        if self._sio is not None:
            await self._sio.disconnect()


RECEIVERS: Final[dict[str, Callable[[Handled], Opener]]] = {
    "raw": RawReceiver, "stabilizer": StabilizerReceiver, "socketio": SocketIOReceiver}


class AckGenerator(OneClient[Opener]):
    """One receiving client, and the command that reports what it handled."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = Handled()

    def make_client(self, kind: str) -> Opener:
        return RECEIVERS[kind](self.handled)

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if name == "take":
            return await self.handled.take(int(cmd["n"]), float(cmd.get("timeout", 30.0)),
                                           bool(cmd.get("latencies")))
        return await super().command(name, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, AckGenerator()))


if __name__ == "__main__":
    main()
