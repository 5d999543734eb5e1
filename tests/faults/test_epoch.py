"""A stream's first message lost with a node's subscription (issue 16, seed 1398604460).

With history on, after redis-server restarted empty, a node whose pub/sub subscription was
down missed the first message of the new `all` epoch; a client welcomed before the restart
received offset 2 first and was never told `recovered: false`. The node followed `all`
only once it had delivered one of its messages, so the catch-up after the lost
subscription skipped it, and its fresh client's baseline (recorded in Redis) was never
where the node started from.

The promise (README, RELIABILITY.md): with history on, a client receives every message of
its streams exactly once and in order, or is told `recovered: false` for that stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConnectionManager
from tests.faults.test_regressions import (
    HISTORY,
    NOTICE,
    RECOVERY,
    Node,
    node,
    proxy,
    subscribers,
    until,
)
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

__all__ = ["node", "proxy"]  # the fixtures, re-exported for pytest

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def _fewer(url: str, channel: str, count: int) -> bool:
    return await subscribers(url, channel) < count


async def _at_least(url: str, channel: str, count: int) -> bool:
    try:
        return await subscribers(url, channel) >= count
    except Exception:  # redis-server is still coming back
        return False


async def _resubscribed(manager: WebSocketConnectionManager, losses: int) -> bool:
    """The node noticed a loss of its subscription since it counted `losses`, and its new
    subscription is confirmed."""
    return (manager.stats.backend_reconnects > losses
            and manager.backend.routing.subscribed.is_set())


async def _answers(url: str) -> bool:
    client = Redis.from_url(url)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def _frames_until(socket: FakeSocket, last: str) -> list[dict[str, Any]]:
    """The message and resume frames `socket` receives, up to the message `last`."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(RECOVERY):
            while not frames or frames[-1].get("data") != last:
                frame = await socket.next_json(timeout=RECOVERY)
                if frame.get("type") in ("message", "resume"):
                    frames.append(frame)
    except TimeoutError:
        frames.append({"type": "timeout"})
    return frames


async def _resync_told(socket: FakeSocket) -> list[dict[str, Any]]:
    """The message and resume frames `socket` receives up to its first `recovered: false`
    (all of them, if none comes within RECOVERY)."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(RECOVERY):
            while not frames or frames[-1].get("recovered") is not False:
                frame = await socket.next_json(timeout=RECOVERY)
                if frame.get("type") in ("message", "resume"):
                    frames.append(frame)
    except TimeoutError:
        pass
    return frames


def _all_stream(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """What a client may rely on for `all`: the messages after the last time it was told
    the stream was lost (as the fault checker judges it)."""
    kept: list[tuple[str, int]] = []
    for frame in frames:
        if frame["type"] == "resume" and not frame["recovered"] and (
                "all" in frame["failed"] or "*" in frame["failed"]):
            kept = [("lost", 0)]
        elif frame["type"] == "message" and frame["stream"] == "all":
            kept.append((frame["data"], frame["offset"]))
    return kept


async def test_a_fresh_client_gets_the_first_message_its_node_missed_resubscribing(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Node a had delivered nothing of `all` when its subscription dropped: the broadcast
    sent meanwhile is the stream's first, and a's client must get it before the second."""
    lagging, b = node("a", proxy.url, **HISTORY), node("b", **HISTORY)
    await lagging.start()
    await b.start()
    alice = FakeSocket("alice")
    await lagging.connect("alice", alice)  # a fresh session: `all` has no message yet
    channel = f"{{{namespace}}}:all"
    losses = lagging.stats.backend_reconnects
    await proxy.drop_subscriptions(hold=True)  # node a stops hearing `all`
    assert await until(lambda: _fewer(private_redis.url, channel, 2), NOTICE)
    assert (await b.broadcast("one")).offset == 1
    proxy.restore()  # node a resubscribes (and catches up)
    assert await until(lambda: _resubscribed(lagging, losses), NOTICE)
    assert await until(lambda: _at_least(private_redis.url, channel, 2))
    assert (await b.broadcast("two")).offset == 2
    frames = await _frames_until(alice, "two")
    assert _all_stream(frames) == [("one", 1), ("two", 2)], (
        f"alice was welcomed before both broadcasts and received {frames}")


async def test_a_client_welcomed_before_an_empty_restart_misses_nothing_untold(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 1398604460: redis-server restarted empty while node a's subscription was down;
    the new epoch's first broadcast missed a, and a's client, welcomed before the restart,
    received offset 2 of the new epoch first, never told `recovered: false`."""
    b = node("b", **HISTORY)
    await b.start()
    assert (await b.broadcast("zero")).offset == 1  # before node a was there
    lagging = node("a", proxy.url, **HISTORY)
    await lagging.start()
    alice = FakeSocket("alice")
    await lagging.connect("alice", alice)  # her session's baseline: offset 1 of `all`
    channel = f"{{{namespace}}}:all"
    losses = lagging.stats.backend_reconnects
    await proxy.drop_subscriptions(hold=True)  # node a's resubscribe will wait
    await asyncio.to_thread(private_redis.restart)  # empty: a new epoch begins
    assert await until(lambda: _answers(private_redis.url))
    assert await until(lambda: _at_least(private_redis.url, channel, 1))  # node b is back
    first = await b.broadcast("one")
    assert first.offset == 1, first  # the new epoch's first message; a hears nothing
    proxy.restore()
    assert await until(lambda: _resubscribed(lagging, losses), NOTICE)
    assert await until(lambda: _at_least(private_redis.url, channel, 2))
    assert (await b.broadcast("two")).offset == 2
    frames = await _frames_until(alice, "two")
    kept = _all_stream(frames)
    assert kept in ([("one", 1), ("two", 2)], [("lost", 0), ("one", 1), ("two", 2)],
                    [("lost", 0), ("two", 2)]), (
        f"alice was welcomed before the restart and received {frames}")


async def test_a_stream_the_store_lost_is_not_taken_for_one_that_expired(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 1393242738: node a's subscription was down when `all` offset 2 went out, and
    redis-server restarted empty before a read it back. a's catch-up found no stream, read
    that as "expired, nothing new", and delivered the new epoch's offset 1 with offset 2
    never reported. a delivered offset 1 a moment before, too recently for the stream to
    have expired: it was lost, and a's client must be told before anything newer."""
    b = node("b", **HISTORY)
    await b.start()
    lagging = node("a", proxy.url, **HISTORY)
    await lagging.start()
    alice = FakeSocket("alice")
    await lagging.connect("alice", alice)
    channel = f"{{{namespace}}}:all"
    assert await until(lambda: _at_least(private_redis.url, channel, 2))
    assert (await b.broadcast("zero")).offset == 1
    assert _all_stream(await _frames_until(alice, "zero")) == [("zero", 1)]
    losses = lagging.stats.backend_reconnects
    await proxy.drop_subscriptions(hold=True)  # node a's resubscribe will wait
    assert await until(lambda: _fewer(private_redis.url, channel, 2), NOTICE)
    assert (await b.broadcast("missed")).offset == 2  # a hears nothing of it
    await asyncio.to_thread(private_redis.restart)  # empty: offset 2 and its stream are gone
    assert await until(lambda: _answers(private_redis.url))
    assert await until(lambda: _at_least(private_redis.url, channel, 1))  # node b is back
    proxy.restore()  # a resubscribes and catches `all` up: the store has nothing of it
    assert await until(lambda: _resubscribed(lagging, losses), NOTICE)
    assert await until(lambda: _at_least(private_redis.url, channel, 2))
    told = await _resync_told(alice)  # the catch-up's verdict, before anything newer
    assert (await b.broadcast("one")).offset == 1  # the new epoch's first message
    frames = told + await _frames_until(alice, "one")
    assert _all_stream(frames) == [("lost", 0), ("one", 1)], (
        f"alice missed `all` offset 2 and received {frames}")
