"""A TCP proxy in the test's event loop between one replica and Redis, with faults to inject.

Each replica gets its own proxy, so one replica can lose Redis while the others keep it:

- `set_latency(seconds)` delays every chunk, both ways, by that much (order is kept);
- `stall()` keeps every connection open but carries no byte either way (new connections
  are accepted and stall too): the replica notices only when a call times out;
- `cut()` resets every connection and resets new ones at once until `restore()`;
- `drop_subscriptions()` resets only the connections that subscribed to channels, and any
  connection that tries to subscribe (or, with `hold`, keeps its subscribe waiting), until
  `restore()`: the replica loses its pub/sub while its commands still work (a slow
  subscriber dropped by Redis, an idle timeout);
- `restore()` undoes all four.

Bytes a replica wrote before it closed a connection are still delivered once the stall ends,
as TCP would (a timed-out command may land late); a cut drops them. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from tests.support.redis_server import free_port

_CHUNK = 65536


@dataclass
class ProxyCounters:
    """What the proxy did, for the run's summary."""

    accepted: int = 0
    reset: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    held: int = 0  # subscribe commands kept waiting (drop_subscriptions with hold)


_SUBSCRIBE = re.compile(rb"(?i)\b[SP]?SUBSCRIBE\b")


class _Link:
    """One forwarded connection: two directions, each a reader and a delayed writer."""

    def __init__(self, proxy: FaultProxy, down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 up: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._proxy = proxy
        self.writers = (down[1], up[1])
        self.subscriber = False  # it sent a (S|P)SUBSCRIBE: a pub/sub connection
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._direction(down[0], up[1], "up")),
            loop.create_task(self._direction(up[0], down[1], "down")),
        ]

    async def _direction(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                         way: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.get_running_loop().create_task(self._deliver(queue, sink, way))
        try:
            while True:
                await self._proxy.flowing.wait()
                data = await source.read(_CHUNK)
                if way == "up" and _SUBSCRIBE.search(data):
                    self.subscriber = True
                    if self._proxy.subscriptions_dropped and not self._proxy.holding:
                        return  # reset: the finally clause aborts both sides
                    if not self._proxy.subscribing.is_set():
                        self._proxy.counters.held += 1
                    await self._proxy.subscribing.wait()
                due = asyncio.get_running_loop().time() + self._proxy.latency
                await queue.put((due, data))
                if not data:
                    break
            await writer  # flush what was read, then close the other side
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.cancel()
            self.abort()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]],
                       sink: asyncio.StreamWriter, way: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if not data:
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self._proxy.flowing.wait()
            sink.write(data)
            self._proxy.count(way, len(data))
            await sink.drain()

    def abort(self) -> None:
        """Reset both sides."""
        for writer in self.writers:
            _reset(writer)

    async def aclose(self) -> None:
        """Reset both sides and wait for the pumps to end."""
        self.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection (an RST, not a FIN) and release the writer."""
    writer.transport.abort()
    writer.close()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream_port>, with latency, stall and cut."""

    def __init__(self, upstream_port: int, *, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.latency = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.counters = ProxyCounters()
        self.subscriptions_dropped = False
        self.holding = False
        self.subscribing = asyncio.Event()  # cleared while new subscriptions are held
        self.subscribing.set()
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._accepting: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<proxy port>"""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def state(self) -> str:
        """"cut", "stalled", "slow" or "ok"."""
        if self._refusing:
            return "cut"
        if not self.flowing.is_set():
            return "stalled"
        if self.subscriptions_dropped:
            return "unsubscribed"
        return "slow" if self.latency else "ok"

    def count(self, way: str, size: int) -> None:
        """Add forwarded bytes to the counters."""
        if way == "up":
            self.counters.bytes_up += size
        else:
            self.counters.bytes_down += size

    async def start(self) -> None:
        """Listen on the proxy port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by `seconds` from now on (0 for none)."""
        self.latency = max(0.0, seconds)

    def stall(self) -> None:
        """Carry no more bytes either way; close nothing."""
        self.flowing.clear()

    async def cut(self) -> None:
        """Reset every connection, and every new one until `restore()`."""
        self._refusing = True
        self.flowing.set()  # a stall ends in a cut: nothing waits on it any more
        links, self._links = self._links, set()
        self.counters.reset += len(links)
        await asyncio.gather(*(link.aclose() for link in links))

    async def drop_subscriptions(self, *, hold: bool = False) -> None:
        """Reset every pub/sub connection, and reset (or, with `hold`, keep waiting) every
        later attempt to subscribe, until `restore()`; other connections carry on."""
        self.subscriptions_dropped = True
        self.holding = hold
        if hold:
            self.subscribing.clear()
        dropped = [link for link in self._links if link.subscriber]
        self._links.difference_update(dropped)
        self.counters.reset += len(dropped)
        await asyncio.gather(*(link.aclose() for link in dropped))

    def restore(self) -> None:
        """No latency, bytes flow, new connections are forwarded."""
        self._refusing = False
        self.subscriptions_dropped = self.holding = False
        self.subscribing.set()
        self.latency = 0.0
        self.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.accepted += 1
        if self._refusing:
            _reset(writer)
            return
        await self.flowing.wait()
        try:
            up = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        if self._refusing or writer.transport.is_closing():
            _reset(writer)
            _reset(up[1])
            return
        link = _Link(self, (reader, writer), up)
        self._links.add(link)
        link.tasks[0].add_done_callback(lambda _task: self._links.discard(link))

    async def aclose(self) -> None:
        """Stop listening and reset everything."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        await self.cut()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
