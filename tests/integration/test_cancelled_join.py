"""A membership change whose caller is cancelled while its write is in flight (a v2
subscribe whose client closed: the session cancels the requests it has running) leaves
that one client in doubt, settled for that client alone at the next maintenance step.
Before, each such change asked for a node-wide resync, which re-registers the presence of
every local connection and settles all their groups: one client repeating subscribe and
close made its node do that at every maintenance step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.v2 import ChannelRequest
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


def _counting(target: Any, name: str) -> list[int]:
    """Count the calls of the coroutine method `target.name` from now on."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(target, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    setattr(target, name, counted)
    return calls


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_redis.port) as forwarder:
        yield forwarder


async def test_a_subscribe_cancelled_in_flight_settles_its_client_alone(
        make_manager: ManagerFactory, private_redis: RedisServer, proxy: FaultProxy,
        namespace: str) -> None:
    manager: WebSocketConnectionManager = make_manager(WebSocketConfig(
        redis_url=proxy.url, namespace=namespace, heartbeat_interval=3600.0,
        heartbeat_timeout=3600.0, node_ttl=1.5, op_timeout=5.0))  # a step every 0.5 s

    def allow(request: SubscribeRequest) -> bool:
        return True

    manager.on_subscribe(allow)
    await manager.start()
    for name in ("a", "b", "c"):
        await manager.connect(name, FakeSocket(name))
    node = manager._node
    backend = node.ctx.backend
    resyncs = _counting(backend.liveness, "resync")
    steps = _counting(backend.liveness, "keepalive")
    conn = manager.get_connection("a")
    assert conn is not None
    groups: Any = backend.groups
    join = groups.join
    landed = asyncio.Event()

    async def reply_held(*args: Any, **kwargs: Any) -> Any:
        """The join runs in Redis; its reply never reaches this node (the client leaves
        while it is on its way back)."""
        change = await join(*args, **kwargs)
        landed.set()
        await asyncio.Event().wait()
        return change

    groups.join = reply_held
    admin = aioredis.Redis.from_url(private_redis.url)  # straight to Redis
    try:
        subscribing = asyncio.create_task(node.sessions.channels.subscribe(
            conn, ChannelRequest(1, "room", None)))
        async with asyncio.timeout(30):  # a bound, not a wait
            await landed.wait()
        subscribing.cancel()  # what the session does to a request when its client leaves
        with pytest.raises(asyncio.CancelledError):
            await subscribing
        del groups.join
        assert [key async for key in admin.scan_iter(match=f"*{namespace}*g:room")
                if await admin.sismember(key, "a")]  # the join ran in Redis
        assert conn.groups == frozenset()  # but this node did not act on it

        async def settled() -> bool:  # the client's settle took what Redis lists
            return set(conn.groups) == {"room"}

        await until(settled)
        seen = len(steps)
        await until(lambda: _more(steps, seen + 1))  # a whole step after the settle
    finally:
        await admin.aclose()
    assert resyncs == []  # nothing re-registered: one client's doubt is that client's
    assert await manager.get_group_members("room") == ["a"]


async def _more(calls: list[int], count: int) -> bool:
    return len(calls) > count
