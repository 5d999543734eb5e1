"""With history, a send whose SEQUENCE script fails: local clients get it without a position
only when it certainly did not run; when it may have run, only its stream delivers it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig
from stabilizer.backends.memory import MemoryBackend, MemoryHub
from stabilizer.errors import BackendNotReached
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY: dict[str, Any] = {"history_size": 100, "session_ttl": 60.0, "op_timeout": 0.5}


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_redis.port) as forwarder:
        yield forwarder


@pytest.mark.redis
@pytest.mark.slow
async def test_a_broadcast_redis_refuses_reaches_local_clients_without_a_position(
    make_manager: ManagerFactory, private_redis: RedisServer, namespace: str,
) -> None:
    node = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                        node_id="a", **QUIET, **HISTORY))
    await node.start()
    alice = FakeSocket("alice")
    await node.connect("alice", alice)
    private_redis.stop(kill=True)

    async with asyncio.timeout(5.0):
        while True:
            result = await node.broadcast("during the outage")
            assert result.remote_error is not None
            if not result.remote_error.startswith("outcome unknown"):
                break
            # Sent on a pooled connection whose close the node had not seen yet: Redis
            # might have run it before it went (nothing tells it apart), so only the stream
            # could deliver it. Once connections are refused, the script cannot have run.
    assert result.remote_error.startswith("not sequenced, delivered locally only")
    assert (result.succeeded, result.offset) == (1, None)
    frame = await alice.next_json()
    assert (frame["data"], frame["offset"], frame["epoch"]) == ("during the outage", None, None)
    assert alice.frames.empty()


@pytest.mark.redis
@pytest.mark.slow
async def test_a_broadcast_redis_answers_too_late_is_delivered_once_from_its_stream(
    make_manager: ManagerFactory, proxy: FaultProxy, namespace: str,
) -> None:
    node = make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                        node_id="a", **QUIET, **HISTORY))
    await node.start()
    alice = FakeSocket("alice")
    await node.connect("alice", alice)
    proxy.set_latency(0.4)  # each way: the answer comes after op_timeout (0.5 s)

    result = await node.broadcast("slow")
    assert result.remote_error is not None
    assert result.remote_error.startswith("outcome unknown, not delivered locally")
    assert (result.total, result.succeeded, result.offset) == (0, 0, None)
    proxy.restore()
    late = await alice.next_json()  # the script ran: the stream delivers it, with a position
    assert (late["data"], late["offset"]) == ("slow", 1)
    await node.broadcast("after")
    after = await alice.next_json()  # nothing in between: "slow" arrived once
    assert (after["data"], after["offset"]) == ("after", 2)


@pytest.mark.redis
@pytest.mark.slow
async def test_a_broadcast_after_redis_forgot_its_scripts_is_sequenced_once(
    make_manager: ManagerFactory, private_redis: RedisServer, namespace: str,
) -> None:
    node = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                        node_id="a", **QUIET, **HISTORY))
    await node.start()
    alice = FakeSocket("alice")
    await node.connect("alice", alice)
    raw = Redis.from_url(private_redis.url)
    try:
        await raw.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    finally:
        await raw.aclose()
    result = await node.broadcast("after the flush")
    assert (result.remote_error, result.offset) == (None, 1)
    await node.broadcast("next")
    frames = [await alice.next_json(), await alice.next_json()]
    assert [(frame["data"], frame["offset"]) for frame in frames] == [
        ("after the flush", 1), ("next", 2)]


async def test_a_closed_memory_backend_certainly_sequences_nothing() -> None:
    backend = MemoryBackend(MemoryHub())
    tasks = TaskOwner()
    await backend.open("a", tasks)
    await backend.aclose()
    with pytest.raises(BackendNotReached):
        await backend.history.sequence(Target("all"), Envelope(Kind.BROADCAST, "a", None, "x"),
                                       size=5, ttl=60.0, meta_ttl=120.0)
    assert await tasks.stop(2.0) == []
