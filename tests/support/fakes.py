"""A fake WebSocket speaking the part of the Starlette API the manager uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from stabilizer.connection import connection


class FakeSocket:
    """Records frames; `gate` (when cleared) makes send() block like a paused transport."""

    def __init__(self, name: str = "fake", *, fail_sends: bool = False) -> None:
        self.name = name
        self.frames: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str | None] | None = None
        self.closed_event = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_sends = fail_sends
        self.send_started = asyncio.Event()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.send_started.set()
        if self.fail_sends:
            raise OSError("connection reset by peer")
        await self.gate.wait()
        payload = message.get("text")
        if payload is None:
            payload = message["bytes"]
        self.sent.append(payload)
        self.frames.put_nowait(payload)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.closed_event.set()

    async def next(self, timeout: float = 3.0) -> str | bytes:
        """Return the next frame sent to this socket (skipping nothing)."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def expect(self, wanted: str | bytes, timeout: float = 3.0) -> None:
        """Wait for a frame equal to `wanted`, skipping any other frames before it."""
        async with asyncio.timeout(timeout):
            while await self.frames.get() != wanted:
                pass

    async def next_json(self, timeout: float = 3.0, *, skip_pings: bool = True) -> Any:
        """Return the next JSON frame, skipping heartbeat pings by default."""
        while True:
            frame = await self.next(timeout)
            assert isinstance(frame, str)
            value = json.loads(frame)
            if skip_pings and isinstance(value, dict) and value.get("type") == "ping":
                continue
            return value

    async def wait_closed(self, timeout: float = 3.0) -> tuple[int, str | None]:
        """Wait until the manager closed this socket; return (code, reason)."""
        async with asyncio.timeout(timeout):
            await self.closed_event.wait()
        assert self.closed is not None
        return self.closed

    def texts(self) -> list[str]:
        """Every text frame sent so far, pings excluded."""
        return [f for f in self.sent if isinstance(f, str) and '"type":"ping"' not in f]


class SlowToClose(FakeSocket):
    """A socket whose close() sets `closing`, then waits until `release` is set (as a lost
    peer's may)."""

    def __init__(self, name: str = "slow-to-close") -> None:
        super().__init__(name)
        self.closing = asyncio.Event()
        self.release = asyncio.Event()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closing.set()
        await self.release.wait()
        await super().close(code, reason)


class FakeWebSocket(FakeSocket):
    """A FakeSocket that also accepts and receives, for Session tests."""

    def __init__(self, name: str = "fake-ws") -> None:
        super().__init__(name)
        self.inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepted = False
        self.query_params: dict[str, str] = {}

    async def accept(self) -> None:
        self.accepted = True

    async def receive(self) -> dict[str, Any]:
        return await self.inbound.get()

    def client_says(self, text: str) -> None:
        """Queue a text frame from the client."""
        self.inbound.put_nowait({"type": "websocket.receive", "text": text})

    def client_leaves(self, code: int = 1001) -> None:
        """Queue the client's disconnect."""
        self.inbound.put_nowait({"type": "websocket.disconnect", "code": code})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await super().close(code, reason)
        self.client_leaves(code)


class GoneTransport:
    """A prepared write (connection/transports.py) whose client has closed: it writes
    nothing, and reports the connection closed with `code`, as uvicorn's adapters do once
    the client's close frame came."""

    kind = "gone"
    server = None

    def __init__(self, code: int = 1000) -> None:
        self.code = code

    def write(self, frame: object) -> bool:
        return False

    def closed(self) -> bool:
        return True

    def close_code(self) -> int | None:
        return self.code


class ClosedByClient(FakeWebSocket):
    """A FakeWebSocket whose client closed right after its handshake: its server's prepared
    write finds the transport closed (give it to connections with `prepared_by_socket`)."""

    def __init__(self, name: str = "closed-by-client", code: int = 1000) -> None:
        super().__init__(name)
        self.prepared = GoneTransport(code)
        self.client_leaves(code)  # what the application would read next


def prepared_by_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a connection take its socket's own `prepared` write when the socket has one
    (a ClosedByClient), and the real lookup's otherwise."""
    found = connection.prepared_writer

    def prepared_writer(socket: Any) -> Any:
        return getattr(socket, "prepared", None) or found(socket)

    monkeypatch.setattr(connection, "prepared_writer", prepared_writer)
