"""The checker's clients: open sockets (plain, or resuming with the newest token and the
positions held), read and record every frame, stall, close cleanly or abort.

Each socket is recorded in the History; the client keeps, like a real one, the newest token
it was given and the positions of the socket that token came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.parse
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.faults.history import History, MessageKey, Position, Received, SocketRecord

_RECEIVE_BUFFER = 16384  # small, so that a stalled reader pushes back on the server soon
_OPEN_TIMEOUT = 5.0


class LiveSocket:
    """A socket, its reader task and its stall gate."""

    def __init__(self, record: SocketRecord, ws: ClientConnection) -> None:
        self.record = record
        self.ws = ws
        self.reading = asyncio.Event()
        self.reading.set()
        self.reader: asyncio.Task[None] | None = None


class Clients:
    """Every socket the run opened, by client id, newest last."""

    def __init__(self, history: History, ports: list[int], node_ids: list[str]) -> None:
        self._history = history
        self._ports = ports
        self._node_ids = node_ids
        self._live: dict[int, LiveSocket] = {}
        self._token: dict[str, int] = {}  # client -> sid of the newest welcome

    def newest(self, client: str) -> LiveSocket | None:
        """The client's most recently opened socket that is still open."""
        live = [s for s in self._live.values()
                if s.record.client == client and s.record.is_open]
        return max(live, key=lambda s: s.record.welcomed or 0.0) if live else None

    def all_live(self) -> list[LiveSocket]:
        """Every socket still open."""
        return [s for s in self._live.values() if s.record.is_open]

    async def connect(self, client: str, replica: int, *, resume: bool) -> SocketRecord:
        """Open one socket for `client` on `replica`; return its record once it is welcomed
        or refused."""
        record = SocketRecord(sid=len(self._history.sockets), client=client, replica=replica,
                              node_id=self._node_ids[replica], started=time.monotonic())
        self._history.sockets.append(record)
        query: dict[str, str] = {}
        parent = self._token.get(client) if resume else None
        if parent is not None:
            source = self._history.sockets[parent]
            record.parent = parent
            record.positions = positions_of(source)
            query["token"] = source.token or ""
            if record.positions:
                query["positions"] = json.dumps(
                    {stream: list(pos) for stream, pos in sorted(record.positions.items())})
        url = f"ws://127.0.0.1:{self._ports[replica]}/ws/{client}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        await self._open(record, url)
        return record

    async def _open(self, record: SocketRecord, url: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(
                    sock, ("127.0.0.1", self._ports[record.replica]))
                ws = await connect(url, sock=sock, open_timeout=_OPEN_TIMEOUT, max_size=None,
                                   max_queue=4, compression=None, ping_interval=None)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            sock.close()
            record.refused = f"{type(exc).__name__}: {exc}"
            record.closed = time.monotonic()
            return
        live = LiveSocket(record, ws)
        self._live[record.sid] = live
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT):
                welcome = json.loads(await ws.recv())
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            self._closed(live, exc)
            ws.transport.abort()
            return
        self._welcomed(record, welcome)
        live.reader = asyncio.get_running_loop().create_task(self._read(live))

    def _welcomed(self, record: SocketRecord, welcome: dict[str, Any]) -> None:
        record.welcomed = time.monotonic()
        record.conn_id = welcome.get("conn_id")
        record.resumed = welcome.get("resumed")
        record.token = welcome.get("token")
        if welcome.get("node_id"):
            record.node_id = welcome["node_id"]
        if record.token:
            self._token[record.client] = record.sid

    async def _read(self, live: LiveSocket) -> None:
        record = live.record
        try:
            while True:
                await live.reading.wait()
                raw = await live.ws.recv()
                record.frames.append(parse_frame(raw, time.monotonic()))
        except ConnectionClosed as exc:
            self._closed(live, exc)
        except asyncio.CancelledError:
            self._closed(live, None)
            raise

    def _closed(self, live: LiveSocket, exc: BaseException | None) -> None:
        record = live.record
        if record.closed is None:
            record.closed = time.monotonic()
        if isinstance(exc, ConnectionClosed) and record.close_code is None:
            record.close_code = exc.rcvd.code if exc.rcvd is not None else 1006

    async def disconnect(self, client: str, *, abrupt: bool) -> str:
        """Close the client's newest open socket; say which."""
        live = self.newest(client)
        if live is None:
            return "no open socket"
        live.record.closed_by_client = "abrupt" if abrupt else "clean"
        if abrupt:
            live.ws.transport.abort()
        else:
            live.reading.set()  # the close handshake needs the reader
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await live.ws.close()
        await self._settled(live)
        return f"sid {live.record.sid}"

    async def _settled(self, live: LiveSocket) -> None:
        if live.reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.shield(live.reader)
        if live.record.closed is None:
            live.record.closed = time.monotonic()

    def stall(self, client: str, *, stalled: bool) -> str:
        """Stop or resume reading the client's newest socket (resume: all of them)."""
        if not stalled:
            for live in self._live.values():
                if live.record.client == client:
                    live.reading.set()
            return "reading"
        newest = self.newest(client)
        if newest is None:
            return "no open socket"
        newest.reading.clear()
        return f"sid {newest.record.sid} stalled"

    def resume_all(self) -> None:
        """Every socket reads again."""
        for live in self._live.values():
            live.reading.set()

    async def close_all(self) -> None:
        """Close every open socket cleanly (bounded), then stop the readers."""
        open_now = self.all_live()
        for live in open_now:
            live.reading.set()
            live.record.closed_by_client = "clean"
        await asyncio.gather(*(self._close_one(live) for live in open_now))
        for live in self._live.values():
            if live.reader is not None and not live.reader.done():
                live.reader.cancel()
        await asyncio.gather(*(live.reader for live in self._live.values()
                               if live.reader is not None), return_exceptions=True)

    async def _close_one(self, live: LiveSocket) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3.0):
                await live.ws.close()
        await self._settled(live)


def parse_frame(raw: str | bytes, at: float) -> Received:
    """Classify one frame: an application message (wrapped with history or not), a resume
    frame, or another control frame."""
    try:
        value = json.loads(raw)
    except ValueError:
        return Received(at, "unparsed")
    if not isinstance(value, dict):
        return Received(at, "unparsed")
    kind = value.get("type")
    if kind == "message":
        data = json.loads(value.get("data") or "null")
        return Received(at, "message", key=message_key(data), stream=value.get("stream"),
                        offset=value.get("offset"), epoch=value.get("epoch"))
    if kind == "resume":
        return Received(at, "resume", recovered=bool(value.get("recovered")),
                        failed=tuple(value.get("failed") or ()))
    if "m" in value:
        return Received(at, "message", key=message_key(value))
    return Received(at, str(kind))


def message_key(data: Any) -> MessageKey | None:
    """(number, repeat) of one of our messages, None for anything else."""
    if isinstance(data, dict) and isinstance(data.get("m"), int):
        return int(data["m"]), int(data.get("r", 0))
    return None


def positions_of(record: SocketRecord) -> dict[str, Position]:
    """The positions a client holds after `record`: inherited from the socket it resumed,
    moved on by every sequenced message it received; a stream reported lost is forgotten."""
    held = dict(record.positions) if record.resumed else {}
    for frame in record.frames:
        if frame.kind == "resume" and not frame.recovered:
            if "*" in frame.failed:
                held.clear()
            for stream in frame.failed:
                held.pop(stream, None)
        elif frame.kind == "message" and frame.stream and frame.offset is not None:
            held[frame.stream] = (frame.offset, str(frame.epoch))
    return held
