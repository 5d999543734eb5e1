"""The inbound rate limit covers heartbeats and acknowledgements too (docs/protocol.md
section 3): a pong answering a ping the server sent, one client heartbeat (a ``ping``, or a
pong no ping asked for) per heartbeat_interval, and an ``ack`` naming a token the
connection awaits are free; any other ``ping``, ``pong`` or ``ack`` counts like a message.
Past the limit it is dropped (a ``ping`` gets no ``pong``) or, with action close, the
connection is closed with 1013. Before, a client could send pings (each answered with a
pong), pongs and acks as fast as it liked, whatever ``rate_limit_messages`` said.

Over real sockets: uvicorn in the test's loop, clients written frame by frame. Pongs are
taken where the server parses them (websockets-sansio, wsproto) or read by the session
(another spelling, or the legacy implementation): both count the same."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, session
from tests.support.inproc_uvicorn import IMPLS, served

BOUND = 10.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}  # no pings of its own
LIMIT = 3
FLOOD = 20
PING = '{"type":"ping"}'
BOGUS_ACK = '{"type":"ack","id":"0123456789abcdef@nowhere"}'
PROTOCOLS = ["plain", "v2"]


def _config(action: str | None, **settings: Any) -> WebSocketConfig:
    limit: dict[str, Any] = {}
    if action is not None:
        limit = {"rate_limit_messages": LIMIT, "rate_limit_window": 60.0,
                 "rate_limit_action": action}
    return WebSocketConfig(**{**QUIET, **limit, **settings})


def _echo_app(manager: WebSocketConnectionManager) -> FastAPI:
    """Every message a client sends within the limit comes back to it."""
    app = FastAPI(lifespan=lifespan(manager))

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        async with session(manager, websocket) as client:
            async for message in client:
                await client.send(message)

    return app


@asynccontextmanager
async def echo_server(config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch,
                      ws: str = "websockets-sansio",
                      ) -> AsyncIterator[tuple[str, WebSocketConnectionManager]]:
    manager = WebSocketConnectionManager(config)
    async with served(_echo_app(manager), ws, monkeypatch) as server:
        yield f"ws://127.0.0.1:{server.port}/ws", manager


class Client:
    """A plain or v2 client that sends exactly what the test says."""

    def __init__(self, ws: ClientConnection, protocol: str, client_id: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.client_id = client_id

    @classmethod
    async def open(cls, url: str, protocol: str) -> Client:
        if protocol == "v2":
            ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connect", "device": "flooder"}))
        else:
            ws = await websockets.connect(url)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), BOUND))
        assert welcome["type"] == "session"
        return cls(ws, protocol, welcome["client_id"])

    async def frames_before_barrier(self) -> list[Any]:
        """Send a message and return what came before its answer (its echo within the
        limit, an ``error`` ``rate_limited`` past it): the server handled every frame sent
        before it, in order."""
        barrier = "barrier"
        await self.ws.send(barrier if self.protocol == "plain"
                           else json.dumps({"type": "message", "data": barrier}))
        frames: list[Any] = []
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), BOUND)
            frame = json.loads(raw) if isinstance(raw, str) and raw.startswith("{") else raw
            echoed = frame == barrier or (isinstance(frame, dict) and
                                          frame.get("data") == barrier)
            refused = isinstance(frame, dict) and frame.get("code") == "rate_limited"
            if echoed or refused:
                return frames
            frames.append(frame)

    async def frames_until_closed(self) -> list[Any]:
        """What the server sent until it closed the connection."""
        frames: list[Any] = []
        async with asyncio.timeout(BOUND):
            try:
                while True:
                    frames.append(json.loads(await self.ws.recv()))
            except ConnectionClosed:
                return frames


def _pongs(frames: list[Any]) -> int:
    return sum(1 for frame in frames if frame == {"type": "pong"})


def _closed_to_come_back_later(client: Client) -> None:
    assert client.ws.close_code == CloseCode.TRY_AGAIN_LATER
    assert client.ws.close_reason is not None
    assert json.loads(client.ws.close_reason)["retry_ms"] >= 60_000  # a window at least


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_pings_past_the_limit_get_no_pong(monkeypatch: pytest.MonkeyPatch,
                                                protocol: str) -> None:
    async with echo_server(_config("drop"), monkeypatch) as (url, manager):
        client = await Client.open(url, protocol)
        for _ in range(FLOOD):
            await client.ws.send(PING)
        frames = await client.frames_before_barrier()
        # the one heartbeat a client may ask for per interval, then the limit's tokens
        assert _pongs(frames) == 1 + LIMIT, frames
        assert frames == [{"type": "pong"}] * (1 + LIMIT)  # dropped ones get no error frame
        assert manager.stats.rate_limited == FLOOD - 1 - LIMIT + 1  # (the barrier too)
        assert manager.get_connection(client.client_id) is not None  # dropped, not closed
        await client.ws.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_ping_flood_with_action_close_is_closed_1013(
        monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    async with echo_server(_config("close"), monkeypatch) as (url, manager):
        client = await Client.open(url, protocol)
        for _ in range(FLOOD):
            await client.ws.send(PING)
        frames = await client.frames_until_closed()
        assert _pongs(frames) == 1 + LIMIT, frames
        _closed_to_come_back_later(client)
        assert manager.stats.rate_limited == 1


PONGS = {"taken by the server": "pong", "read by the session": '{"type": "pong"}'}


@pytest.mark.parametrize("ws", IMPLS)
@pytest.mark.parametrize("spelling", PONGS)
async def test_pongs_beyond_the_pings_sent_count(monkeypatch: pytest.MonkeyPatch, ws: str,
                                                 spelling: str) -> None:
    async with echo_server(_config("drop"), monkeypatch, ws) as (url, manager):
        client = await Client.open(url, "plain")
        for _ in range(FLOOD):
            await client.ws.send(PONGS[spelling])
        assert await client.frames_before_barrier() == []  # no answer, no error frame
        assert manager.stats.pongs == 1 + LIMIT  # a free one, and the limit's tokens
        assert manager.stats.rate_limited == FLOOD - 1 - LIMIT + 1
        assert manager.get_connection(client.client_id) is not None
        await client.ws.close()


@pytest.mark.parametrize("ws", IMPLS)
@pytest.mark.parametrize("spelling", PONGS)
async def test_a_pong_flood_with_action_close_is_closed_1013(
        monkeypatch: pytest.MonkeyPatch, ws: str, spelling: str) -> None:
    async with echo_server(_config("close"), monkeypatch, ws) as (url, manager):
        client = await Client.open(url, "plain")
        for _ in range(FLOOD):
            await client.ws.send(PONGS[spelling])
        assert await client.frames_until_closed() == []
        _closed_to_come_back_later(client)
        assert manager.stats.rate_limited == 1


async def test_acks_naming_nothing_awaited_count(monkeypatch: pytest.MonkeyPatch) -> None:
    async with echo_server(_config("drop"), monkeypatch) as (url, manager):
        client = await Client.open(url, "v2")
        for _ in range(FLOOD):
            await client.ws.send(BOGUS_ACK)
        assert await client.frames_before_barrier() == []
        assert manager.stats.rate_limited == FLOOD - LIMIT + 1
        assert manager.get_connection(client.client_id) is not None
        await client.ws.close()


async def test_an_ack_flood_with_action_close_is_closed_1013(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with echo_server(_config("close"), monkeypatch) as (url, manager):
        client = await Client.open(url, "v2")
        for _ in range(FLOOD):
            await client.ws.send(BOGUS_ACK)
        assert await client.frames_until_closed() == []
        _closed_to_come_back_later(client)
        assert manager.stats.rate_limited == 1


async def _answer_everything(client: Client, answered: Callable[[str], None]) -> None:
    """A well-behaved client: a pong for every ping, an ack for every message asking."""
    try:
        async for raw in client.ws:
            frame = json.loads(raw)
            if frame.get("type") == "ping":
                await client.ws.send("pong")
                answered("ping")
            elif frame.get("ack") is not None:
                await client.ws.send(json.dumps({"type": "ack", "id": frame["ack"]}))
                answered("ack")
    except ConnectionClosed:
        pass


@asynccontextmanager
async def well_behaved(client: Client, answered: Callable[[str], None],
                       ) -> AsyncIterator[None]:
    answering = asyncio.ensure_future(_answer_everything(client, answered))
    try:
        yield
    finally:
        await client.ws.close()
        await answering


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_client_answering_every_ping_and_acking_every_message_is_never_limited(
        monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    """With a limit of one message an hour and action close (any frame it counted would
    close the connection): pings answered one at a time, many at once, and acknowledged
    messages, one at a time and many at once."""
    config = _config("close", rate_limit_messages=1, rate_limit_window=3600.0)
    async with echo_server(config, monkeypatch) as (url, manager):
        client = await Client.open(url, protocol)
        async with well_behaved(client, lambda _kind: None):
            for _ in range(FLOOD):
                await manager.ping(client.client_id, timeout=BOUND)
            await asyncio.gather(*(manager.ping(client.client_id, timeout=BOUND)
                                   for _ in range(FLOOD)))
            if protocol == "v2":
                for i in range(FLOOD):
                    assert await manager.send_to_client(client.client_id, f"m{i}", ack=True,
                                                        timeout=BOUND)
                sent = await asyncio.gather(*(
                    manager.send_to_client(client.client_id, f"n{i}", ack=True, timeout=BOUND)
                    for i in range(FLOOD)))
                assert all(sent)
            assert await manager.ping(client.client_id, timeout=BOUND) >= 0  # still there
            assert manager.stats.rate_limited == 0
            assert manager.get_connection(client.client_id) is not None


@pytest.mark.parametrize("ws", IMPLS)
async def test_a_client_answering_the_heartbeat_is_never_limited(
        monkeypatch: pytest.MonkeyPatch, ws: str) -> None:
    """The heartbeat loop's own pings, answered with the pong the server takes where it
    parses frames (or the session reads, on the legacy implementation)."""
    config = _config("close", rate_limit_messages=1, rate_limit_window=3600.0,
                     heartbeat_interval=0.05, heartbeat_timeout=BOUND)
    async with echo_server(config, monkeypatch, ws) as (url, manager):
        client = await Client.open(url, "plain")
        enough = asyncio.Event()
        answers: list[str] = []

        def answered(kind: str) -> None:
            answers.append(kind)
            if len(answers) >= FLOOD:
                enough.set()

        async with well_behaved(client, answered):
            async with asyncio.timeout(BOUND):
                await enough.wait()
            assert await manager.ping(client.client_id, timeout=BOUND) >= 0  # all read
            assert manager.stats.rate_limited == 0
            assert manager.get_connection(client.client_id) is not None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_without_a_limit_every_heartbeat_is_answered_and_counted(
        monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    async with echo_server(_config(None), monkeypatch) as (url, manager):
        client = await Client.open(url, protocol)
        for _ in range(FLOOD):
            await client.ws.send(PING)
            await client.ws.send("pong")
            await client.ws.send('{"type": "pong"}')
            if protocol == "v2":
                await client.ws.send(BOGUS_ACK)
        assert await client.frames_before_barrier() == [{"type": "pong"}] * FLOOD
        assert manager.stats.pongs == 2 * FLOOD
        assert manager.stats.rate_limited == 0
        await client.ws.close()
