"""Resumption with positions and inbound rate limits, through real uvicorn and clients."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from stabilizer import CloseCode
from tests.e2e.conftest import Launcher, Replicas
from tests.support.clients import closed_with, open_client, recv_json

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
HISTORY = {"history_size": 100, "session_ttl": 60, **QUIET}


async def app_messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await recv_json(ws) for _ in range(count)]


def positions_of(frames: list[dict[str, Any]]) -> str:
    latest: dict[str, list[Any]] = {}
    for frame in frames:
        if frame.get("type") == "message":
            latest[frame["stream"]] = [frame["offset"], frame["epoch"]]
    return urllib.parse.quote(json.dumps(latest))


@pytest.mark.redis
async def test_resume_on_another_replica_replays_what_was_missed(replicas: Replicas) -> None:
    a, b = replicas(2, **HISTORY)
    alice, hello = await open_client(f"{a.ws}/ws/alice")
    await asyncio.to_thread(b.post, "/admin/broadcast", {"message": "seen"})
    seen = await app_messages(alice, 1)
    assert seen[0]["data"] == "seen"
    await alice.close()  # the network drops; the session stays resumable

    for text in ("missed-1", "missed-2"):
        await asyncio.to_thread(a.post, "/admin/broadcast", {"message": text})
    sent = await asyncio.to_thread(a.post, "/admin/send/alice", {"message": "direct-while-away"})
    assert sent["sent"] is True  # kept for the resumable session

    url = f"{b.ws}/ws/alice?token={hello['token']}&positions={positions_of(seen)}"
    back, again = await open_client(url)
    try:
        assert again["resumed"] is True
        replay = await app_messages(back, 4)
        # streams are replayed one after another ("all", then "c:alice"), each in order
        assert [f["data"] for f in replay[:3]] == ["missed-1", "missed-2", "direct-while-away"]
        assert replay[3] == {"type": "resume", "recovered": True, "replayed": 3, "failed": []}
        await asyncio.to_thread(a.post, "/admin/broadcast", {"message": "live"})
        assert (await recv_json(back))["data"] == "live"
    finally:
        await back.close()


async def test_resume_after_trimming_reports_recovered_false(launch: Launcher) -> None:
    server = launch(**{**HISTORY, "history_size": 2})
    alice, hello = await open_client(f"{server.ws}/ws/alice")
    await asyncio.to_thread(server.post, "/admin/broadcast", {"message": "seen"})
    seen = await app_messages(alice, 1)
    await alice.close()
    await asyncio.to_thread(server.post, "/admin/broadcast", {"message": "x", "repeat": 5})
    url = f"{server.ws}/ws/alice?token={hello['token']}&positions={positions_of(seen)}"
    back, again = await open_client(url)
    assert again["resumed"] is True
    assert await recv_json(back) == {"type": "resume", "recovered": False, "replayed": 0,
                                     "failed": ["all"]}
    await back.close()


async def test_malformed_positions_close_with_1008(launch: Launcher) -> None:
    server = launch(**HISTORY)
    first, hello = await open_client(f"{server.ws}/ws/alice")
    await first.close()
    bad = urllib.parse.quote('{"all": "not a position"}')
    ws = await connect(f"{server.ws}/ws/alice?token={hello['token']}&positions={bad}")
    assert await closed_with(ws) == CloseCode.POLICY_VIOLATION


async def test_rate_limit_drop_answers_with_error_frames(launch: Launcher) -> None:
    server = launch(rate_limit_messages=3, rate_limit_window=60, rate_limit_action="drop",
                    **QUIET)
    ws, _ = await open_client(f"{server.ws}/ws/chatty")
    for i in range(5):
        await ws.send(f"echo:{i}")
    frames = [await ws.recv() for _ in range(5)]
    echoes = [f for f in frames if isinstance(f, str) and f.startswith("echo:")]
    errors = [json.loads(f) for f in frames if f not in echoes]
    assert echoes == ["echo:0", "echo:1", "echo:2"]
    assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"]
    await ws.send("pong")  # a heartbeat of its own: one per heartbeat_interval is free
    await ws.send('{"type":"ping"}')  # a second one counts: over the limit, no pong
    await ws.send("echo:5")  # answered in order, after the two above
    assert json.loads(await ws.recv())["code"] == "rate_limited"  # nothing came before it
    stats = (await asyncio.to_thread(server.get, "/stats"))[1]
    assert stats["counters"]["pongs"] == 1
    assert stats["counters"]["rate_limited"] == 4
    await ws.close()


async def test_rate_limit_close_tells_the_client_to_come_back_later(launch: Launcher) -> None:
    """1013 with retry advice of at least one window, not 1008 (which clients treat as
    final)."""
    server = launch(rate_limit_messages=2, rate_limit_window=60, rate_limit_action="close",
                    **QUIET)
    ws, _ = await open_client(f"{server.ws}/ws/flooder")
    for i in range(3):
        await ws.send(f"echo:{i}")
    assert await closed_with(ws) == CloseCode.TRY_AGAIN_LATER
    assert ws.close_reason is not None
    assert json.loads(ws.close_reason)["retry_ms"] >= 60_000
