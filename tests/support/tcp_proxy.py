"""A TCP forwarder in the test's event loop that can cut one node off from Redis while the
others keep talking to it (a network partition, not a Redis outage).

`cut()` drops the node's connections (it notices at once, as after a reset); `freeze()` keeps
them open and silently stops carrying bytes (it notices only when a call times out).
"""

from __future__ import annotations

import asyncio

from tests.support.redis_server import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream port until cut or frozen; `restore()` undoes
    either."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._closed = False

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<proxy port>"""
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again, on the same port)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and reset every forwarded connection, both ways."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def freeze(self) -> None:
        """Carry no more bytes either way, on open and new connections; close nothing."""
        self._flowing.clear()

    async def restore(self) -> None:
        """Carry bytes and accept connections again."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        if self._closed or writer.transport.is_closing():
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        loop = asyncio.get_running_loop()
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = loop.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()

    async def aclose(self) -> None:
        """Cut everything for good."""
        self._closed = True
        await self.cut()
        self._flowing.set()  # connections accepted while frozen wake up and close

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
