"""A group followed while the node's subscription is being made is part of it.

Found by the fault checker (seed 10, 60 operations): a client joined g0 on replica-1 while
replica-1 was resubscribing after a lost pub/sub connection; the new subscription had been
built from the channels before the join, the join saw a subscription in progress and left
the channel to "the next subscription", and no subscription came: the group's channel had no
subscriber while the replica held a member.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.faults.test_regressions import FAST, NOTICE, QUIET, subscribers, until
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def resubscribing(manager: WebSocketConnectionManager) -> bool:
    """The node noticed its lost subscription and its new subscribe is under way."""
    routing: Any = manager.backend.routing
    return not routing.subscribed.is_set() and routing._pubsub is not None


async def test_a_group_joined_while_the_node_resubscribes_is_subscribed(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    async with FaultProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                               node_id="a", **QUIET, **FAST))
        await manager.start()
        alice = FakeSocket("alice")
        await manager.connect("alice", alice)
        node_channel = f"{{{namespace}}}:n:a"
        group_channel = f"{{{namespace}}}:gc:room"

        async def node_unsubscribed() -> bool:
            return await subscribers(private_redis.url, node_channel) == 0

        await proxy.drop_subscriptions(hold=True)
        assert await until(node_unsubscribed, NOTICE)
        assert await until(lambda: resubscribing(manager), NOTICE)
        await manager.join_group("alice", "room")  # while the subscription is in progress
        proxy.restore()

        async def node_subscribed() -> bool:
            return await subscribers(private_redis.url, node_channel) == 1

        assert await until(node_subscribed, NOTICE)

        async def group_subscribed() -> bool:
            return await subscribers(private_redis.url, group_channel) == 1

        assert await until(group_subscribed), "room's channel has no subscriber"
        await manager.send_to_group("room", "hello room")
        await alice.expect("hello room", timeout=5.0)


async def test_a_group_left_while_the_node_resubscribes_is_unsubscribed(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    async with FaultProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                               node_id="a", **QUIET, **FAST))
        await manager.start()
        await manager.connect("alice", FakeSocket("alice"))
        await manager.join_group("alice", "room")
        group_channel = f"{{{namespace}}}:gc:room"
        assert await subscribers(private_redis.url, group_channel) == 1
        routing = manager.backend.routing
        await proxy.drop_subscriptions(hold=True)
        assert await until(lambda: resubscribing(manager), NOTICE)
        await manager.leave_group("alice", "room")
        proxy.restore()
        assert await until(lambda: _true(routing.subscribed.is_set()), NOTICE)

        async def group_unsubscribed() -> bool:
            return await subscribers(private_redis.url, group_channel) == 0

        assert await until(group_unsubscribed), "room's channel is followed with no member"


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("torn_down", [True, False], ids=["listener-closed-it", "still-current"])
async def test_a_pubsub_command_failing_with_a_non_redis_error_still_releases_the_client(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory, torn_down: bool,
) -> None:
    """Found by the fault checker (seed 2018342692): a client's group was left (its socket
    closed) while the listener closed its lost pub/sub connection; redis-py raised
    AttributeError from the unsubscribe, which escaped the close: the connection was never
    released (its other group kept it) and the ASGI app logged the exception."""
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           node_id="a", **QUIET, **FAST))
    await manager.start()
    await manager.connect("alice", FakeSocket("alice"))
    for group in ("room", "hall"):
        await manager.join_group("alice", group)
    conn = manager.get_connection("alice")
    assert conn is not None
    released = weakref.ref(conn)
    del conn
    routing: Any = manager.backend.routing
    pubsub = routing._pubsub

    async def unsubscribe(*channels: str) -> Any:
        if torn_down:  # as the listener does with a lost subscription, before closing it
            routing._pubsub = None
        raise AttributeError("'NoneType' object has no attribute 'credential_provider'")

    pubsub.unsubscribe = unsubscribe
    try:
        await manager.disconnect("alice")  # leaves both groups locally
    finally:
        routing._pubsub = pubsub  # (as after the listener's next subscription)
    assert manager.get_connection_count() == 0
    assert await manager.get_group_members("room") == []
    assert await manager.get_group_members("hall") == []
    gc.collect()
    assert released() is None, "the node still holds alice's Connection"


async def _pubsub_clients(url: str) -> int:
    client = Redis.from_url(url)
    try:
        return len(await client.client_list(_type="pubsub"))
    finally:
        await client.aclose()


async def test_a_lost_subscription_is_closed_only_after_a_group_command_in_flight_on_it(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    """Found by the fault checker (seed 13, in CI): a group's SUBSCRIBE was in flight on the
    pub/sub connection when the listener closed it after a Redis restart. Closing handed the
    connection back to the client's pool while the SUBSCRIBE was still re-establishing it;
    a script then read the same socket as that handshake ("read() called while another
    coroutine is already waiting") and the broadcast failed with an ASGI error. A command
    that resumed after the close opened a fresh pub/sub connection no one ever read or
    closed."""
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           node_id="a", **QUIET, **FAST))
    await manager.start()
    await manager.connect("alice", FakeSocket("alice"))
    routing: Any = manager.backend.routing
    pubsub = routing._pubsub
    pool = manager.backend.client.connection_pool
    pubsub_connection = pubsub.connection
    group_channel = f"{{{namespace}}}:gc:room"
    in_flight, released = asyncio.Event(), asyncio.Event()
    subscribe, release = pubsub.subscribe, pool.release

    async def stalled_subscribe(*channels: Any) -> Any:
        if channels == (group_channel,):
            in_flight.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(NOTICE):
                    await released.wait()  # the close, had it not waited for this command
        return await subscribe(*channels)

    async def watched_release(connection: Any) -> None:
        if connection is pubsub_connection:
            released.set()
        await release(connection)

    pubsub.subscribe, pool.release = stalled_subscribe, watched_release
    joining = asyncio.create_task(manager.join_group("alice", "room"))
    await in_flight.wait()
    killer = Redis.from_url(private_redis.url)
    try:
        await killer.client_kill_filter(_type="pubsub")
    finally:
        await killer.aclose()
    await joining
    assert await until(lambda: _true(routing.subscribed.is_set()
                                     and routing._pubsub is not pubsub), NOTICE)
    assert await _pubsub_clients(private_redis.url) == 1, "a pub/sub connection leaked"
    assert await subscribers(private_redis.url, group_channel) == 1
