"""Load generator that also measures end-to-end latency: ``bench.loadgen`` plus send stamps.

Messages sent by ``bench.replicas`` carry the sender's clock in their text:
``b<seq>:<monotonic_ns>:xxxx`` (Socket.IO: ``42["msg","b<seq>:<ns>:xxx"]``). CLOCK_MONOTONIC
is one clock for every process of the machine, so ``time.monotonic_ns()`` when a frame is
parsed here, minus the stamp, is the latency from the sender's library call to the client.
Frames are counted exactly as ``bench.loadgen`` counts them (``bcast``); stamped ones also
record their latency and the time the last one arrived.

Extra commands (JSON lines on stdin, like ``bench.loadgen``): ``lat`` returns the latencies
recorded since the last ``lat`` with ``"reset": true`` (in µs) and the arrival time of the
last stamped frame (``last_ns``); ``reset`` forgets them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._common import raise_nofile_limit
from bench.loadgen import Client, Counters, Generator, serve


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


class ProbeGenerator(Generator):
    """Generator whose clients record latencies."""

    client_class = ProbeClient

    def make_counters(self) -> Counters:
        return ProbeCounters()

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
