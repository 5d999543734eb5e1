"""A resume's replay reports what a live delivery reports of the acknowledgements its frames
ask for (docs/protocol.md 6.7): one node served by uvicorn in this event loop (memory
backend, and real Redis), with a v2 client written by hand.

Before, the replay handed its frames to the connection directly: a token the connection
forgot during a replay of over 1,024 unacknowledged messages was reported only by a later
acknowledged send to the client, and its send waited out its whole timeout. (A plain
client replayed an acknowledged message: tests/e2e/test_ack_gone.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stabilizer import AckTimeoutError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.streams import client_stream
from tests.integration.test_acks import ANN, HISTORY, Tab, tabs_of_ann
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

KEPT: int = 1024  # the unacknowledged tokens a connection remembers (docs/protocol.md 6.7)
LONG = 3600.0  # an acknowledgement timeout the test never waits out
Node = tuple[WebSocketConnectionManager, str]  # a node and its ws:// URL


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def node(request: pytest.FixtureRequest, namespace: str,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    """A node with history (room in the outbox for the whole replay), served on loopback."""
    settings: dict[str, Any] = {**HISTORY, "history_size": 4 * KEPT,
                                "max_queue_size": 4 * KEPT}
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    manager = WebSocketConnectionManager(WebSocketConfig(namespace=namespace, **settings))
    async with served(session_app(manager, ANN), "websockets-sansio", monkeypatch) as server:
        yield manager, f"ws://127.0.0.1:{server.port}/ws"


async def test_a_token_forgotten_during_a_replay_fails_its_send_at_once(
    node: Node,
) -> None:
    manager, url = node
    away = await Tab.open(url, "away")
    await away.leave()
    await until(tabs_of_ann(manager, 0))
    sends = [asyncio.create_task(manager.send_to_client(away.client_id, f"m{n}", ack=True,
                                                        timeout=LONG))
             for n in range(KEPT + 1)]
    history = manager._node.ctx.backend.history

    async def all_kept() -> bool:  # every send sequenced: the replay carries them all
        found = await history.read(client_stream(away.client_id), 0, "")
        return len(found.envelopes) == KEPT + 1

    try:
        await until(all_kept, timeout=30)
        back = await Tab.open(url, "away", reconnect_token=away.token, positions={})
        first = await back.message()
        assert first["data"] == "m0"
        async with asyncio.timeout(10):  # not the send's timeout: the node says so at once
            with pytest.raises(AckTimeoutError, match="too many messages unacknowledged"):
                await sends[0]
        assert not any(send.done() for send in sends[1:])  # the newest 1,024 are awaited
        await back.ws.close()
    finally:
        for send in sends:
            send.cancel()
        with contextlib.suppress(asyncio.CancelledError, AckTimeoutError):
            await asyncio.gather(*sends, return_exceptions=True)
