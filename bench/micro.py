"""In-process micro-benchmark: the library's own cost per fan-out delivery, no network.

Every "socket" is an object whose async ``send`` returns at once, so what is timed is
``manager.broadcast`` itself against a plain ``for ws in conns: await ws.send(...)`` loop.
Run ``python -m bench.micro``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from stabilizer import WebSocketConfig, WebSocketConnectionManager


class NullSocket:
    """The part of a Starlette WebSocket the manager uses; sends cost nothing."""

    application_state = None

    async def send(self, message: Any) -> None:
        return None

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        return None


async def measure(clients: int, broadcasts: int, num_shards: int) -> tuple[float, float]:
    """Return (µs per delivery through manager.broadcast, µs per delivery plain loop)."""
    manager = WebSocketConnectionManager(WebSocketConfig(
        heartbeat_interval=3600.0, heartbeat_timeout=7200.0, num_shards=num_shards,
    ))
    await manager.start()
    try:
        sockets = [NullSocket() for _ in range(clients)]
        for index, socket in enumerate(sockets):
            await manager.connect(f"c{index}", socket)
        text = "b" * 64
        started = time.perf_counter()
        for _ in range(broadcasts):
            await manager.broadcast(text)
        library = time.perf_counter() - started
        message = {"type": "websocket.send", "text": text}
        started = time.perf_counter()
        for _ in range(broadcasts):
            for socket in sockets:
                await socket.send(message)
        plain = time.perf_counter() - started
    finally:
        await manager.graceful_shutdown(timeout=1.0)
    deliveries = clients * broadcasts
    return library / deliveries * 1e6, plain / deliveries * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--broadcasts", type=int, default=40)
    args = parser.parse_args()
    for shards in (16, 1):
        library, plain = asyncio.run(measure(args.clients, args.broadcasts, shards))
        print(f"num_shards={shards:>2}: manager.broadcast {library:.2f} µs/delivery, "
              f"plain await loop {plain:.2f} µs/delivery ({args.clients} no-op sockets)")


if __name__ == "__main__":
    main()
