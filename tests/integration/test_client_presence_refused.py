"""A refused ``subscribe(..., presence=True)`` of a channel the Python client holds already
leaves that subscription as it was: not following presence, and with none of the refused
subscribe's callbacks.

Before, the client made the channel's presence copy (and added the `on_presence`) before
the request, and kept both after a refusal when the channel was held; after the next
reconnect it subscribed to the channel again asking for presence, was refused again, and
dropped a subscription that worked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import (
    ChannelOptions,
    RPCError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.client import RetryPolicy, connect
from stabilizer.pure.presence import PresenceMap
from tests.integration.test_client_unusable_frames import BOUND
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

FAST = RetryPolicy(base=0.01, cap=0.05)
QUIET: dict[str, Any] = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
HISTORY: dict[str, Any] = {"history_size": 50, "history_ttl": 60.0, "session_ttl": 60.0}


def allow(asked: list[str]) -> Any:
    """An on_subscribe hook that allows every channel, with presence metadata where the
    channel has presence, and records the channels it is asked for; it refuses a
    subscribe whose params are "deny"."""
    def hook(request: SubscribeRequest) -> bool | dict[str, str]:
        asked.append(request.channel)
        if request.params == "deny":
            return False
        return True if request.channel.startswith("stats:") else {"id": request.client_id}
    return hook


@pytest.mark.parametrize("history", [False, True], ids=["fresh session", "kept session"])
async def test_a_held_channel_survives_a_refused_presence_subscribe_and_a_reconnect(
        monkeypatch: pytest.MonkeyPatch, history: bool) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(
        **QUIET, **(HISTORY if history else {}),
        channel_namespaces={"stats:": ChannelOptions(presence=False)}))
    asked: list[str] = []
    manager.on_subscribe(allow(asked))
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    told: list[str] = []
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, retry=FAST) as client,
    ):
        await client.subscribe("stats:x", got.put_nowait, on_unsubscribed=told.append)
        with pytest.raises(RPCError) as refused:
            await client.subscribe("stats:x", presence=True)
        assert refused.value.code == "bad_request"  # (its namespace turns presence off)
        with pytest.raises(KeyError):
            client.presence("stats:x")
        # a channel that follows presence: subscribed again after any reconnect, after
        # stats:x (in the order subscribed), so its second ask closes the round
        await client.subscribe("room", presence=True)
        client_id = client.client_id
        assert client_id is not None
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')

        async def round_over() -> bool:
            return asked.count("room") >= 2 and client.client_id is not None

        await until(round_over, timeout=10)
        assert told == []
        assert asked.count("stats:x") == (1 if history else 2)
        await manager.send_to_group("stats:x", "tick")
        async with asyncio.timeout(BOUND):
            assert await got.get() == "tick"


async def test_a_refused_presence_subscribe_adds_no_on_presence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    manager.on_subscribe(allow([]))
    refused_saw: list[tuple[PresenceMap, PresenceMap]] = []
    url_of = "ws://127.0.0.1:{}/ws"
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server:
        url = url_of.format(server.port)
        async with connect(url, protocol=2) as client, connect(url, protocol=2) as other:
            await client.subscribe("room", presence=True)
            with pytest.raises(RPCError) as refused:
                await client.subscribe("room", params="deny", presence=True,
                                       on_presence=lambda *change: refused_saw.append(change))
            assert refused.value.code == "forbidden"
            await other.subscribe("room")  # a change of the presence
            await client.presence("room").until(lambda members: len(members) == 2, BOUND)
    assert refused_saw == []
