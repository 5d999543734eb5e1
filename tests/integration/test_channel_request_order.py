"""A v2 client's requests on one channel take effect in the order it sent them, and its
subscribes in flight count towards max_channels_per_connection. Over real sockets (uvicorn
in the test's loop), on the in-process backend and on Redis.

Before, each request ran in a task of its own with nothing between them: an unsubscribe
sent right after a subscribe of the same channel could finish before the subscribe's hook
did, both were answered with success, and the client ended a member receiving the
channel's messages. And every subscribe in flight passed the limit's check before any of
them joined, so a client could exceed the limit by up to rpc_max_in_flight - 1."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from stabilizer import RPCCall, SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import RetryPolicy, connect
from tests.integration.test_emitter import until
from tests.integration.test_hostile_text import next_frame, v2_client
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


class Gate:
    """An on_subscribe hook that holds every subscribe until `release` is set."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.release = asyncio.Event()

    async def __call__(self, request: SubscribeRequest) -> bool:
        self.asked[request.channel] += 1
        await self.release.wait()
        return True


def _app(manager: WebSocketConnectionManager, gate: Gate) -> FastAPI:
    app = session_app(manager)

    async def echo(call: RPCCall) -> Any:
        return call.params

    manager.on_subscribe(gate)
    manager.rpc("echo")(echo)
    return app


@asynccontextmanager
async def gated_server(config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch,
                       ) -> AsyncIterator[tuple[str, WebSocketConnectionManager, Gate]]:
    manager = WebSocketConnectionManager(config)
    gate = Gate()
    async with served(_app(manager, gate), "websockets-sansio", monkeypatch) as server:
        yield f"ws://127.0.0.1:{server.port}/ws", manager, gate


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


Replies = dict[Any, dict[str, Any]]


async def replies(ws: ClientConnection, count: int, got: Replies | None = None) -> Replies:
    """`got` and further reply frames, by id, until there are `count` (any other frame is
    a failure)."""
    got = dict(got or {})
    while len(got) < count:
        frame = await next_frame(ws)
        assert frame["type"] == "reply", frame
        got[frame["id"]] = frame
    return got


async def fence(ws: ClientConnection) -> Replies:
    """Send an rpc after the frames before it and await its reply, which means the server
    read them all and started each (an rpc runs beside channel requests); return the
    other replies that came first."""
    await send(ws, type="rpc", id="fence", method="echo", params="fence")
    got = {}
    while (frame := await next_frame(ws)).get("id") != "fence":
        assert frame["type"] == "reply", frame
        got[frame["id"]] = frame
    assert frame == {"type": "reply", "id": "fence", "result": "fence"}
    return got


async def test_an_unsubscribe_sent_right_after_a_subscribe_leaves_the_client_out(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gated_server(config, monkeypatch) as (url, manager, gate):
        ws = await v2_client(url, "flip")
        channels = [f"flip:{i}" for i in range(5)]
        for i, channel in enumerate(channels):
            await send(ws, type="subscribe", id=2 * i, channel=channel)
            await send(ws, type="unsubscribe", id=2 * i + 1, channel=channel)
        early = await fence(ws)  # every unsubscribe was read while its subscribe waited
        assert set(gate.asked) == set(channels)
        gate.release.set()
        got = await replies(ws, 2 * len(channels), early)
        assert all("result" in reply for reply in got.values()), got
        client_id = "flip"
        assert await manager.get_client_groups(client_id) == []
        for channel in channels:
            assert await manager.get_group_members(channel) == []
        # and no message of theirs reaches it: the next frame is the one sent after them
        for channel in channels:
            await manager.send_to_group(channel, "after unsubscribe")
        await manager.send_to_client(client_id, "direct")
        frame = await next_frame(ws)
        assert (frame["type"], frame["data"]) == ("message", "direct")
        await ws.close()


async def test_requests_on_other_channels_are_not_held_up(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gated_server(config, monkeypatch) as (url, manager, gate):
        ws = await v2_client(url, "busy")
        await send(ws, type="subscribe", id=1, channel="held")
        await send(ws, type="unsubscribe", id=2, channel="other")  # not a member: fine
        assert await next_frame(ws) == {"type": "reply", "id": 2,
                                        "result": {"channel": "other"}}
        gate.release.set()
        assert await next_frame(ws) == {"type": "reply", "id": 1,
                                        "result": {"channel": "held"}}
        assert await manager.get_client_groups("busy") == ["held"]
        await ws.close()


async def test_subscribes_in_flight_count_towards_the_channel_limit(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config.replace(max_channels_per_connection=3)
    async with gated_server(config, monkeypatch) as (url, manager, gate):
        ws = await v2_client(url, "greedy")
        for i in range(6):
            await send(ws, type="subscribe", id=i, channel=f"ch:{i}")
        early = await fence(ws)  # every subscribe started (and met the limit's check)
        gate.release.set()
        got = await replies(ws, 6, early)
        codes = Counter("ok" if "result" in r else r["error"]["code"] for r in got.values())
        assert codes == {"ok": 3, "limit_exceeded": 3}
        assert len(await manager.get_client_groups("greedy")) == 3
        # a subscribe again to a channel it is in is no new channel: allowed at the limit
        ok = [int(i) for i, r in got.items() if "result" in r]
        await send(ws, type="subscribe", id=10, channel=f"ch:{ok[0]}")
        assert "result" in await next_frame(ws)
        await ws.close()


async def test_requests_waiting_behind_one_on_their_channel_count_towards_rpc_max_in_flight(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """rpc_max_in_flight bounds the requests a client has unanswered, waiting ones too: each
    holds its frame on the server (session/calls.py says why it stays so)."""
    async with gated_server(config.replace(rpc_max_in_flight=3), monkeypatch) as (
            url, _, gate):
        ws = await v2_client(url, "queued")
        await send(ws, type="subscribe", id=1, channel="held")  # runs: the gate holds it
        await send(ws, type="unsubscribe", id=2, channel="held")  # wait behind it
        await send(ws, type="subscribe", id=3, channel="held")
        await send(ws, type="rpc", id=4, method="echo", params="over")
        refused = await next_frame(ws)
        assert (refused["id"], refused["error"]["code"]) == (4, "overloaded"), refused
        gate.release.set()
        got = await replies(ws, 3)
        assert all("result" in reply for reply in got.values()), got
        await send(ws, type="rpc", id=5, method="echo", params="room again")
        assert await next_frame(ws) == {"type": "reply", "id": 5, "result": "room again"}
        await ws.close()


async def test_the_python_client_leaves_a_channel_it_unsubscribed_while_subscribing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The application does not await the subscribe before it unsubscribes: the client
    must not take the subscribe's late success for a subscription (it subscribed to it
    again after every reconnect)."""
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120)  # no history
    async with (
        gated_server(config, monkeypatch) as (url, manager, gate),
        connect(url, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05)) as client,
    ):
        subscribing = asyncio.create_task(client.subscribe("left"))
        await until(lambda: _true(gate.asked["left"] == 1))
        unsubscribing = asyncio.create_task(client.unsubscribe("left"))
        fenced = asyncio.create_task(client.rpc("echo", 1))  # sent after the unsubscribe
        assert await asyncio.wait_for(fenced, 5) == 1
        gate.release.set()
        await asyncio.wait_for(asyncio.gather(subscribing, unsubscribing), 5)
        await client.subscribe("kept")  # (subscribed again after "left", if that were kept)
        client_id = client.client_id
        assert client_id is not None
        assert await manager.get_client_groups(client_id) == ["kept"]
        # a reconnect into a session without history: the client subscribes again to
        # what it believes it is subscribed to, in the order it subscribed
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
        await until(lambda: _true(gate.asked["kept"] == 2), timeout=10)

        async def kept_again() -> bool:
            return await manager.get_group_members("kept") == [client_id]

        await until(kept_again)
        assert gate.asked["left"] == 1
        assert await manager.get_client_groups(client_id) == ["kept"]


async def _true(value: bool) -> bool:
    return value
