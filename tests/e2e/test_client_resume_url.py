"""The Python client's protocol-1 resume against a server that reads handshake lines of at
most 8 KiB (uvicorn's default): positions that would make the URL longer stay home, the
token alone resumes the session, the server replays each stream from the session's start,
and the client drops what it had, so every message arrives exactly once.

Before, the client put up to 63 KiB of positions (about 1.5 times that URL-encoded) in the
query; uvicorn's default WebSocket implementation never answers such a handshake, so every
attempt to resume failed after the open timeout."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from stabilizer.client import ClientConnection, ResumeResult, RetryPolicy, connect
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

# 64 groups with long names, one message each: about 9 KB of positions JSON, 12 KB encoded
GROUPS = [f"room-{n:02d}-" + "x" * 110 for n in range(64)]
BOUND = 20.0  # seconds: a bound on each wait, not a wait


@pytest.fixture
def history_server() -> Iterator[UvicornProcess]:
    """tests/e2e/app.py with history, reading handshake lines of at most 8 KiB, as uvicorn
    does by default (the other e2e servers raise the limit, as compose.yaml does)."""
    env = {"STABILIZER_HISTORY_SIZE": "500", "STABILIZER_HEARTBEAT_INTERVAL": "3600",
           "STABILIZER_HEARTBEAT_TIMEOUT": "3600", "WEBSOCKETS_MAX_LINE_LENGTH": "8192"}
    with UvicornProcess(env=env) as proc:
        yield proc


async def post(server: UvicornProcess, path: str, body: object = None) -> None:
    await asyncio.to_thread(server.post, path, body)


async def received(conn: ClientConnection, count: int) -> list[str | bytes]:
    async with asyncio.timeout(BOUND):
        return [await conn.recv() for _ in range(count)]


async def test_positions_too_long_for_a_handshake_line_stay_home_and_none_is_lost_or_twice(
        history_server: UvicornProcess) -> None:
    server = history_server
    resumes: asyncio.Queue[ResumeResult] = asyncio.Queue()
    async with connect(f"{server.ws}/ws/alice", retry=RetryPolicy(base=0.01, cap=0.05),
                       open_timeout=3.0, on_resume=resumes.put_nowait) as conn:
        first = conn.session
        assert first is not None
        assert first.history
        for group in GROUPS:
            await post(server, f"/admin/join/alice/{group}")
        for index, group in enumerate(GROUPS):
            await post(server, f"/admin/send_group/{group}", {"message": f"before {index}"})
        texts = await received(conn, len(GROUPS))
        assert len(quote(json.dumps(conn.positions, separators=(",", ":")))) > 8192
        await post(server, "/admin/disconnect/alice?code=4000")
        for index, group in enumerate(GROUPS):  # while away (or just back: either way once)
            await post(server, f"/admin/send_group/{group}", {"message": f"away {index}"})
        async with asyncio.timeout(BOUND):
            resume = await resumes.get()
        assert (resume.recovered, resume.session_resumed) == (True, True)
        assert conn.session is not None
        assert conn.session.conn_id != first.conn_id
        # (only the token can have resumed it: a URL with the positions is never answered)
        # replayed from the session's start: what the client had came again, and is dropped
        assert resume.replayed >= len(GROUPS)
        await post(server, f"/admin/send_group/{GROUPS[0]}", {"message": "after"})
        texts += await received(conn, len(GROUPS) + 1)
    assert texts[-1] == "after"
    assert Counter(texts) == Counter(
        ["after", *(f"{when} {n}" for when in ("before", "away") for n in range(64))])
