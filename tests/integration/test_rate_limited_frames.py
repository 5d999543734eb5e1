"""The inbound rate limit covers every frame a v2 client sends (heartbeats and
acknowledgements: test_rate_limited_control.py): a frame of an unknown type or a malformed
one counts like a message, and past the limit it is dropped without its `error` reply; a
request counts whatever comes of it. Before, each got an `error` frame back without limit
(and a request refused at once, for a bad method or channel, an id still running or too
many unanswered, its refusal): a client could make the node parse and answer as fast as it
could send, whatever `rate_limit_messages` said."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from stabilizer import RPCCall, WebSocketConfig
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
            await ws.send('{"type":"ping"}')  # answered in order, after the junk (the
            # one heartbeat of its own a client may send per interval without a token)
            kinds: list[str] = []
            while (frame := json.loads(await ws.recv()))["type"] != "pong":
                kinds.append(f"{frame['type']}:{frame.get('code')}")
            assert len(kinds) <= 4, kinds  # the 3 the limit lets through (and one notice)
            assert manager.stats.rate_limited >= 80
            assert manager.get_connection("junk") is not None  # dropped, not closed
        finally:
            await ws.close()


def _answer(frame: dict[str, Any]) -> str:
    code = frame.get("code") or (frame.get("error") or {}).get("code") or "ok"
    return f"{frame['type']}:{code}"


REFUSED_REQUESTS: dict[str, tuple[Callable[[int], str], int]] = {
    # the frames a burst sends, and how many of them keep running (unanswered)
    "rpc without an id": (lambda _i: '{"type":"rpc","method":"echo"}', 0),
    "rpc with a bad method": (lambda i: json.dumps({"type": "rpc", "id": i,
                                                    "method": "bad name"}), 0),
    "subscribe to a bad channel": (lambda i: json.dumps({"type": "subscribe", "id": i,
                                                         "channel": ""}), 0),
    "publish without data": (lambda i: json.dumps({"type": "publish", "id": i,
                                                   "channel": "room"}), 0),
    "an id still running": (lambda _i: '{"type":"rpc","id":1,"method":"hold"}', 1),
    "past rpc_max_in_flight": (lambda i: json.dumps({"type": "rpc", "id": i,
                                                     "method": "hold"}), 2),
    "refresh to a server without an authenticator": (
        lambda _i: '{"type":"refresh","token":"t"}', 0),
}


@pytest.mark.parametrize("case", REFUSED_REQUESTS)
async def test_refused_requests_count_against_the_rate_limit(
        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A request refused at once (no usable id, a bad method or channel, an id still
    running, too many unanswered) counts like any other. Past the limit, one whose id can
    be read gets the reply `rate_limited` (every call with an id gets one reply), one
    without is dropped. Before, each got its refusal back without limit."""
    make, running = REFUSED_REQUESTS[case]
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120,
                             rate_limit_messages=3, rate_limit_window=60.0,
                             rpc_max_in_flight=2)
    async with chat_server(config, monkeypatch) as (url, manager, _):
        release = asyncio.Event()

        @manager.rpc("hold")
        async def hold(_call: RPCCall) -> None:
            await release.wait()

        ws = await v2_client(url, "burst")
        try:
            frames = [make(i) for i in range(30)]
            for frame in frames:
                await ws.send(frame)
            await ws.send('{"type":"ping"}')  # answered in order, after the burst (free)
            answers: list[str] = []
            while (frame := json.loads(await ws.recv()))["type"] != "pong":
                answers.append(_answer(frame))
            refusals = [answer for answer in answers if answer != "reply:rate_limited"]
            assert len(refusals) + running <= 4, answers  # the 3 the limit lets through
            if '"id"' in frames[0]:
                assert len(answers) + running == 30, answers  # one reply per frame
            else:
                assert len(answers) <= 4, answers  # past the limit: dropped
            assert manager.stats.rate_limited >= 26
            assert manager.get_connection("burst") is not None  # dropped, not closed
        finally:
            release.set()
            await ws.close()
