"""A store that answers slowly, but within op_timeout, is not an outage.

Calls of one script that meet in time share a round trip (ScriptBatcher); a call made while
a batch is in flight waits for it, then goes in the next one. Each round trip is bounded by
op_timeout, so such a call may wait for up to two. A timer of op_timeout around the call
itself took that wait for an outage: under a burst of disconnects the node logged presence
"not removed", asked for a resync, and re-registered all its clients for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from stabilizer import Emitter, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def test_a_disconnect_queued_behind_a_slow_batch_is_not_taken_for_an_outage(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="stabilizer")
    async with FaultProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(
            redis_url=proxy.url, namespace=namespace, node_id="a", op_timeout=1.5,
            node_ttl=3600.0, **QUIET))
        await manager.start()
        await manager.connect("c1", FakeSocket())
        await manager.connect("c2", FakeSocket())
        batcher = manager.backend.presence._unregisters  # type: ignore[attr-defined]
        original = batcher._send
        in_flight = asyncio.Event()

        async def send(calls: list[Any]) -> list[Any]:
            in_flight.set()
            return await original(calls)

        monkeypatch.setattr(batcher, "_send", send)
        proxy.set_latency(0.5)  # a round trip of about 1 s: within op_timeout (1.5 s)

        first = asyncio.create_task(manager.disconnect("c1"))
        await in_flight.wait()  # c1's removal is on the wire: c2's waits for it
        second = asyncio.create_task(manager.disconnect("c2"))
        await asyncio.gather(first, second)
        proxy.restore()

        assert [r.getMessage() for r in caplog.records if "not removed" in r.getMessage()] == []
        assert await manager.locate_client("c1") is None
        assert await manager.locate_client("c2") is None


async def test_a_direct_send_queued_behind_a_slow_batch_still_arrives(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Direct sends to another node's client share a round trip too: one made while a batch
    is in flight neither fails nor reports the client unreachable."""
    async with FaultProxy(private_redis.port) as proxy:
        options: dict[str, Any] = {"namespace": namespace, "op_timeout": 1.5,
                                   "node_ttl": 3600.0, **QUIET}
        a = make_manager(WebSocketConfig(redis_url=proxy.url, node_id="a", **options))
        b = make_manager(WebSocketConfig(redis_url=private_redis.url, node_id="b", **options))
        await a.start()
        await b.start()
        socket = FakeSocket()
        await b.connect("bob", socket)
        batcher = a.backend.routing._routes  # type: ignore[attr-defined]
        original = batcher._send
        in_flight = asyncio.Event()

        async def send(calls: list[Any]) -> list[Any]:
            in_flight.set()
            return await original(calls)

        monkeypatch.setattr(batcher, "_send", send)
        proxy.set_latency(0.5)  # a round trip of about 1 s: within op_timeout (1.5 s)

        first = asyncio.create_task(a.send_to_client("bob", "one"))
        await in_flight.wait()
        second = asyncio.create_task(a.send_to_client("bob", "two"))
        assert await asyncio.gather(first, second) == [True, True]
        proxy.restore()
        await socket.expect("one")
        await socket.expect("two")


async def test_an_emitters_send_queued_behind_a_slow_batch_still_arrives(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's emitter batches its direct sends the same way, and bounds them the same."""
    async with FaultProxy(private_redis.port) as proxy:
        b = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                         node_id="b", node_ttl=3600.0, **QUIET))
        await b.start()
        socket = FakeSocket()
        await b.connect("bob", socket)
        async with Emitter(proxy.url, namespace=namespace, op_timeout=1.5) as emitter:
            assert await emitter.send_to_client("bob", "zero")  # opened, scripts loaded
            batcher = emitter._backend.routing._routes  # type: ignore[attr-defined]
            original = batcher._send
            in_flight = asyncio.Event()

            async def send(calls: list[Any]) -> list[Any]:
                in_flight.set()
                return await original(calls)

            monkeypatch.setattr(batcher, "_send", send)
            proxy.set_latency(0.5)  # a round trip of about 1 s: within op_timeout (1.5 s)
            first = asyncio.create_task(emitter.send_to_client("bob", "one"))
            await in_flight.wait()
            second = asyncio.create_task(emitter.send_to_client("bob", "two"))
            assert await asyncio.gather(first, second) == [True, True]
            proxy.restore()
        for text in ("zero", "one", "two"):
            await socket.expect(text)
