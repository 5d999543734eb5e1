"""A resuming Python client keeps its connect frame under the max_message_size a v2 server
states in its session frame: its positions and the channels it names fit what the rest of
the frame leaves under that limit (and MAX_RESUME_TEXT), by the budget's own rule."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import websockets
from websockets.typing import Subprotocol

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import (
    ConnectionState,
    ResumeResult,
    RetryPolicy,
    StateChange,
    connect,
)
from tests.integration.test_client_resubscribe import Gate, away, history_app, kept_history
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


async def test_a_v2_session_frame_states_the_servers_max_message_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit on the frames the server reads goes in every v2 session frame (the
    client reads it); a plain client's session frame is as before."""
    manager = WebSocketConnectionManager(WebSocketConfig(max_message_size=4096))
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        v2 = [Subprotocol("stabilizer.v2")]
        async with websockets.connect(url, subprotocols=v2) as ws:
            await ws.send('{"type":"connect","device":"d"}')
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["type"], frame["max_message_size"]) == ("session", 4096)
        async with websockets.connect(url) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert frame["type"] == "session"
            assert "max_message_size" not in frame
        async with connect(url, protocol=2) as client:
            await client.send("opened")
            assert client.session is not None
            assert client.session.max_message_size == 4096


async def test_a_resume_fits_a_server_whose_max_message_size_is_small(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server taking frames of at most 4,096 bytes; a client holding 40 channels with a
    message each: about 5.5 KB of positions and 4.8 KB of names. Before, its resuming
    connect frame took both: the server closed it with 1009, final for the client, and the
    session was lost. Now the positions stay home (more than fit: the server replays from
    the session's start and the client drops what it had), the channels that fit are
    named (a leave of one while away is told), and the session resumes."""
    limit = 4096
    manager = WebSocketConnectionManager(kept_history().replace(max_message_size=limit))
    channels = [f"room-{n:02d}-" + "x" * 110 for n in range(40)]
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    ended: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    resumed: asyncio.Queue[ResumeResult] = asyncio.Queue()
    closed = asyncio.Event()
    endings: list[StateChange] = []

    def told(channel: str) -> Callable[[str], None]:
        return lambda reason: ended.put_nowait((channel, reason))

    def on_state(change: StateChange) -> None:
        if change.state is ConnectionState.CLOSED:
            endings.append(change)
            closed.set()

    async with served(history_app(manager, []), "websockets-sansio", monkeypatch) as server:
        gate = Gate(f"ws://127.0.0.1:{server.port}/ws")
        async with connect(gate, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05),
                           on_resume=resumed.put_nowait, on_state=on_state) as client:
            for channel in channels:
                await client.subscribe(channel, on_message=got.put_nowait,
                                       on_unsubscribed=told(channel))
                await manager.send_to_group(channel, "m")
            for _ in channels:
                await asyncio.wait_for(got.get(), 5)
            assert len(client.positions) == len(channels)
            client_id = client.client_id
            assert client_id is not None
            await away(manager, client_id, gate)
            await manager.leave_group(client_id, channels[0])  # named: it fits
            gate.open = True
            result = await resumed_or_closed(resumed, closed)
            assert result is not None, f"closed for good: {endings}"
            assert result.session_resumed
            assert await asyncio.wait_for(ended.get(), 10) == (channels[0], "server")
            await manager.send_to_client(client_id, "marker")
            assert await asyncio.wait_for(client.recv(), 5) == "marker"
            assert got.empty()  # the replayed messages were dropped as duplicates
            assert await manager.get_client_groups(client_id) == channels[1:]


async def resumed_or_closed(resumed: asyncio.Queue[ResumeResult],
                            closed: asyncio.Event) -> ResumeResult | None:
    """The client's next resume, or None when it closed for good first."""
    resume = asyncio.ensure_future(resumed.get())
    gone = asyncio.ensure_future(closed.wait())
    try:
        done, _ = await asyncio.wait([resume, gone], timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (resume, gone):
            task.cancel()
        await asyncio.gather(resume, gone, return_exceptions=True)
    assert done, "neither resumed nor closed in time"
    return resume.result() if resume in done else None
