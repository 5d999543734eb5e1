"""A fan-out gives the event loop a turn every max_concurrent_broadcast recipients, within
a shard too: a group's (or a user's) local recipients are one list, and a broadcast's are
num_shards lists, and the loop got a turn only between lists, so a send to a channel of
50,000 local members held the node (heartbeats, reads, other sends) for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.support.fakes import FakeSocket

MEMBERS = 400
SLICE = 10


@pytest.fixture(params=[1, 16], ids=["one-shard", "sixteen-shards"])
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[WebSocketConnectionManager]:
    config = WebSocketConfig(max_concurrent_broadcast=SLICE, num_shards=request.param,
                             heartbeat_interval=3600.0, heartbeat_timeout=3600.0)
    async with WebSocketConnectionManager(config) as manager:
        yield manager


async def turns_during(send: Callable[[], Awaitable[object]]) -> int:
    """How many times another task ran while `send` was awaited."""
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)  # (it is waiting for its next turn)
    turns = 0
    try:
        await send()
    finally:
        done = True
        await task
    return turns


@pytest.mark.parametrize("kind", ["broadcast", "group"])
async def test_a_fan_out_yields_every_slice_of_recipients(
        manager: WebSocketConnectionManager, kind: str) -> None:
    sockets = [FakeSocket(f"c{i}") for i in range(MEMBERS)]
    for index, socket in enumerate(sockets):
        await manager.connect(f"c{index}", socket)
        await manager.join_group(f"c{index}", "room")

    async def send(text: str) -> object:
        if kind == "broadcast":
            return await manager.broadcast(text)
        return await manager.send_to_group("room", text)

    turns = await turns_during(lambda: send("first"))
    await send("second")
    assert turns >= MEMBERS // SLICE - 1
    for socket in sockets:  # every recipient, once each, in order
        assert [await socket.next(), await socket.next()] == ["first", "second"]


@pytest.mark.parametrize("kind", ["broadcast", "group"])
async def test_fan_outs_that_overlap_reach_every_connection_in_the_order_they_began(
        manager: WebSocketConnectionManager, kind: str) -> None:
    """Two sends from two tasks, the second begun while the first yields: the second
    excludes the first member, so their slices fell out of step, and the members past the
    first slice got the second message before the first."""
    sockets = [FakeSocket(f"c{i}") for i in range(MEMBERS)]
    for index, socket in enumerate(sockets):
        await manager.connect(f"c{index}", socket)
        await manager.join_group(f"c{index}", "room")

    async def send(text: str, exclude: str | None) -> object:
        if kind == "broadcast":
            return await manager.broadcast(text, exclude_client=exclude)
        return await manager.send_to_group("room", text, exclude_client=exclude)

    await asyncio.gather(send("first", None), send("second", "c0"))
    assert [await sockets[0].next()] == ["first"]
    for socket in sockets[1:]:
        assert [await socket.next(), await socket.next()] == ["first", "second"]
