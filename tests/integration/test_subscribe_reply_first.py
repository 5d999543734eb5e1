"""A channel's messages reach a v2 client only after the reply to its subscribe, and none
at all when that reply says it is not subscribed (docs/protocol.md 6.6). Over real sockets
(uvicorn in the test's loop), on the in-process backend and on Redis, with and without
history.

The server joins the connection locally before it writes the membership to the backend,
so that nothing sent between the two is lost. Before, the connection received the
channel's messages from that local join on: a message sent while the write was in flight
reached the client ahead of the reply (the Python client handed it to recv() as a direct
message), and when the write then failed, the client had been sent messages of a channel
the reply said it was not in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import MembershipChange
from stabilizer.errors import BackendUnavailable
from tests.conftest import ManagerFactory
from tests.integration.test_channel_request_order import send
from tests.integration.test_hostile_text import next_frame, v2_client
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

CHANNEL = "room"


class HeldJoin:
    """Holds the backend write of a join of `client_id` until `release` is set, then
    writes it, or fails it (`fail`) as a backend that cannot be reached does."""

    def __init__(self, manager: WebSocketConnectionManager, client_id: str) -> None:
        groups = manager._node.ctx.backend.groups
        real: Callable[..., Awaitable[MembershipChange]] = groups.join
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False

        async def join(member: str, group: str, **kwargs: Any) -> MembershipChange:
            if member == client_id:
                self.entered.set()
                await self.release.wait()
                if self.fail:
                    raise BackendUnavailable("redis unavailable: held by the test")
            return await real(member, group, **kwargs)

        groups.join = join  # type: ignore[method-assign]  # (this instance only)


@asynccontextmanager
async def server(config: WebSocketConfig, history: bool,
                 monkeypatch: pytest.MonkeyPatch,
                 ) -> AsyncIterator[tuple[str, WebSocketConnectionManager]]:
    if history:
        config = config.replace(history_size=100, history_ttl=60.0)
    manager = WebSocketConnectionManager(config)
    manager.on_subscribe(lambda request: True)
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as served_:
        yield f"ws://127.0.0.1:{served_.port}/ws", manager


async def subscribed_witness(url: str) -> ClientConnection:
    """A client in the channel already: once it has a message, the node's fan-out of that
    message reached every local member."""
    witness = await v2_client(url, "witness")
    await send(witness, type="subscribe", id=1, channel=CHANNEL)
    assert "result" in await next_frame(witness)
    return witness


async def publish_while_joining(url: str, manager: WebSocketConnectionManager, *,
                                fail: bool,
                                sender: WebSocketConnectionManager | None = None,
                                ) -> ClientConnection:
    """Subscribe client `x` with its backend write held, have `sender` (another node, or
    x's own) send the channel a message meanwhile (taken by the fan-out of x's node before
    the write ends), then end the write."""
    witness = await subscribed_witness(url)
    held = HeldJoin(manager, "x")
    held.fail = fail
    x = await v2_client(url, "x")
    await send(x, type="subscribe", id=7, channel=CHANNEL)
    async with asyncio.timeout(5):
        await held.entered.wait()
    await (sender or manager).send_to_group(CHANNEL, "early")
    frame = await next_frame(witness)
    assert (frame["type"], frame["data"]) == ("message", "early")  # x's turn came too
    held.release.set()
    await witness.close()
    return x


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
async def test_the_reply_to_a_subscribe_comes_before_the_channels_messages(
        config: WebSocketConfig, history: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(config, history, monkeypatch) as (url, manager):
        x = await publish_while_joining(url, manager, fail=False)
        first = await next_frame(x)
        assert first == {"type": "reply", "id": 7, "result": {"channel": CHANNEL}}
        frame = await next_frame(x)  # held until the reply, not lost
        assert (frame["type"], frame["data"]) == ("message", "early")
        assert frame.get("channel") == CHANNEL or frame.get("stream") == f"g:{CHANNEL}"
        await manager.send_to_group(CHANNEL, "later")
        frame = await next_frame(x)
        assert (frame["type"], frame["data"]) == ("message", "later")
        await x.close()


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
async def test_a_subscribe_that_fails_lets_none_of_the_channels_messages_through(
        config: WebSocketConfig, history: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(config, history, monkeypatch) as (url, manager):
        x = await publish_while_joining(url, manager, fail=True)
        first = await next_frame(x)
        assert (first["type"], first["id"]) == ("reply", 7)
        assert first["error"]["code"] == "unavailable", first
        await manager.send_to_client("x", "direct")
        frame = await next_frame(x)  # nothing of the channel came between
        assert (frame["type"], frame["data"]) == ("message", "direct")
        assert "x" not in await manager.get_group_members(CHANNEL)
        await x.close()


@pytest.mark.redis
@pytest.mark.parametrize("fail", [False, True], ids=["joined", "failed"])
@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
async def test_another_nodes_messages_wait_for_the_reply_too(
        redis_url: str, namespace: str, make_manager: ManagerFactory, history: bool,
        fail: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace,
                             heartbeat_interval=60, heartbeat_timeout=120)
    async with server(config, history, monkeypatch) as (url, manager):
        other = make_manager(manager.config)
        await other.start()
        x = await publish_while_joining(url, manager, fail=fail, sender=other)
        first = await next_frame(x)
        assert (first["type"], first["id"]) == ("reply", 7)
        assert ("error" in first) == fail, first
        await manager.send_to_client("x", "direct")
        frame = await next_frame(x)
        if not fail:
            assert (frame["type"], frame["data"]) == ("message", "early")
            frame = await next_frame(x)
        assert (frame["type"], frame["data"]) == ("message", "direct")
        await x.close()


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
async def test_a_busy_channel_during_a_slow_join_does_not_close_a_client_that_reads(
        config: WebSocketConfig, history: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """More of the channel's messages than the outbox holds arrive while the join is
    written: x, reading all along, keeps its socket; it gets the reply, then (with history)
    the notice that messages of the channel's stream were lost, then later messages."""
    config = config.replace(max_queue_size=8)
    async with server(config, history, monkeypatch) as (url, manager):
        witness = await subscribed_witness(url)
        held = HeldJoin(manager, "x")
        x = await v2_client(url, "x")
        await send(x, type="subscribe", id=7, channel=CHANNEL)
        async with asyncio.timeout(5):
            await held.entered.wait()
        for i in range(20):  # (x's turn in each fan-out came once the witness has it)
            await manager.send_to_group(CHANNEL, f"m{i}")
            frame = await next_frame(witness)
            assert frame["data"] == f"m{i}"
        held.release.set()
        first = await next_frame(x)
        assert first == {"type": "reply", "id": 7, "result": {"channel": CHANNEL}}
        if history:
            assert await next_frame(x) == {"type": "resume", "recovered": False,
                                           "replayed": 0, "failed": [f"g:{CHANNEL}"]}
        await manager.send_to_group(CHANNEL, "later")
        seen: list[int] = []
        while (frame := await next_frame(x))["data"] != "later":  # held after the loss
            assert frame["type"] == "message", frame
            seen.append(int(frame["data"][1:]))
        assert seen, "the messages held since the drop follow the reply"
        assert seen == list(range(seen[0], 20))  # the newest, in order
        assert manager.get_connection("x") is not None
        await witness.close()
        await x.close()
