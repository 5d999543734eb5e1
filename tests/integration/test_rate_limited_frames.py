"""The inbound rate limit covers every frame a v2 client sends but heartbeats and
acknowledgements: a frame of an unknown type or a malformed one counts like a message, and
past the limit it is dropped without its `error` reply. Before, each got an `error` frame
back without limit: a client could make the node parse and answer as fast as it could
send, whatever `rate_limit_messages` said."""

from __future__ import annotations

import json

import pytest

from stabilizer import WebSocketConfig
from tests.integration.test_hostile_text import chat_server, v2_client

JUNK = ['{"type":"no-such-type"}', '{"type":', '["not", "an", "object"]']


async def test_junk_frames_count_against_the_rate_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120,
                             rate_limit_messages=3, rate_limit_window=60.0)
    async with chat_server(config, monkeypatch) as (url, manager, _):
        ws = await v2_client(url, "junk")
        try:
            for _ in range(30):
                for frame in JUNK:
                    await ws.send(frame)
            await ws.send('{"type":"ping"}')  # answered in order, after the junk
            kinds: list[str] = []
            while (frame := json.loads(await ws.recv()))["type"] != "pong":
                kinds.append(f"{frame['type']}:{frame.get('code')}")
            assert len(kinds) <= 4, kinds  # the 3 the limit lets through (and one notice)
            assert manager.stats.rate_limited >= 80
            assert manager.get_connection("junk") is not None  # dropped, not closed
        finally:
            await ws.close()
