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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from stabilizer import Emitter, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
T = TypeVar("T")


def slowed(proxy: FaultProxy, batcher: Any, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make Redis's round trip about 1 s (within op_timeout: 1.5 s in these tests); return
    an event set when `batcher` (a ScriptBatcher) puts a batch on the wire."""
    proxy.set_latency(0.5)
    original = batcher._send
    in_flight = asyncio.Event()

    async def send(calls: list[Any]) -> list[Any]:
        in_flight.set()
        return await original(calls)

    monkeypatch.setattr(batcher, "_send", send)
    return in_flight


async def one_behind_another(in_flight: asyncio.Event, first: Awaitable[T],
                             second: Callable[[], Awaitable[T]]) -> list[T]:
    """Await `first`, and once its batch is on the wire `second()`, which waits for it."""
    ahead = asyncio.ensure_future(first)
    await in_flight.wait()
    return list(await asyncio.gather(ahead, second()))


async def two_sends(proxy: FaultProxy, batcher: Any, monkeypatch: pytest.MonkeyPatch,
                    send: Callable[[str, str], Awaitable[bool]]) -> list[bool]:
    """"one" and "two" to bob through a slow Redis, the second made while the first's batch
    is on the wire; what each send returned."""
    in_flight = slowed(proxy, batcher, monkeypatch)
    sent = await one_behind_another(in_flight, send("bob", "one"), lambda: send("bob", "two"))
    proxy.restore()
    return sent


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
        in_flight = slowed(proxy, batcher, monkeypatch)

        # c2's removal is made while c1's is on the wire: it waits for it
        await one_behind_another(in_flight, manager.disconnect("c1"),
                                 lambda: manager.disconnect("c2"))
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
        assert await two_sends(proxy, batcher, monkeypatch, a.send_to_client) == [True, True]
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
            sent = await two_sends(proxy, batcher, monkeypatch, emitter.send_to_client)
            assert sent == [True, True]
        for text in ("zero", "one", "two"):
            await socket.expect(text)
