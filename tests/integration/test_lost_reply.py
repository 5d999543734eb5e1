"""A send or a broadcast whose reply Redis sent but the replica never read (the connection
broke after the command ran) is not sent again: remote clients get the message once.

The client used to be built with one immediate redis-py retry (for pooled connections a
Redis restart had killed), and redis-py retries a command after any connection error,
also one raised while reading the reply: a script or a PUBLISH that had run then ran
again and delivered twice (a send's script when it was alone in its batch; a broadcast's
PUBLISH). Both tests fail on that code. Every command is now sent once
(`backends/redis/connect.py`), and script batches are written straight to a pooled
connection (`backends/redis/exchange.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError

from stabilizer import BroadcastFailedError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.redis.connect import client_for
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import (
    RedisClusterServers,
    RedisServer,
    cluster_cli,
)

pytestmark = pytest.mark.redis

T = TypeVar("T")

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_redis.port) as forwarder:
        yield forwarder


async def sender_and_bob(make_manager: ManagerFactory, proxy: FaultProxy,
                         private_redis: RedisServer,
                         namespace: str) -> tuple[WebSocketConnectionManager, FakeSocket]:
    """Replica a reaches Redis through the proxy; bob is on replica b, which reaches it
    directly (so that what a's commands publish reaches bob at once)."""
    sender = make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                          node_id="a", op_timeout=10.0, **QUIET))
    owner = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                         node_id="b", **QUIET))
    await sender.start()
    await owner.start()
    bob = FakeSocket("bob")
    await owner.connect("bob", bob)
    return sender, bob


async def lose_the_reply(proxy: FaultProxy, bob: FakeSocket,
                         call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `call` (which sends bob "once") so that Redis runs its command and the reply
    is lost: held in the proxy, then dropped with the connection."""
    proxy.set_latency(5.0)  # each way: the command lands in 5 s, its reply 5 s later
    sending = asyncio.create_task(call)
    assert await bob.next(timeout=8.0) == "once"  # the command ran: its publish reached b
    await proxy.cut()
    proxy.restore()
    return sending


async def test_a_send_whose_reply_is_lost_reaches_its_client_once(
    make_manager: ManagerFactory, proxy: FaultProxy, private_redis: RedisServer,
    namespace: str,
) -> None:
    sender, bob = await sender_and_bob(make_manager, proxy, private_redis, namespace)
    assert await sender.send_to_client("bob", "warm")  # the script is loaded
    assert await bob.next() == "warm"

    sent = await (await lose_the_reply(proxy, bob, sender.send_to_client("bob", "once")))

    assert await sender.send_to_client("bob", "after")
    assert await bob.next() == "after"  # nothing in between: "once" arrived once
    assert sent is False  # the sender cannot know it ran: it does not claim delivery


async def test_a_broadcast_whose_reply_is_lost_reaches_remote_clients_once(
    make_manager: ManagerFactory, proxy: FaultProxy, private_redis: RedisServer,
    namespace: str,
) -> None:
    sender, bob = await sender_and_bob(make_manager, proxy, private_redis, namespace)

    sending = await lose_the_reply(proxy, bob, sender.broadcast("once"))
    with contextlib.suppress(BroadcastFailedError):  # (it reached nobody it knows of)
        await sending

    await sender.broadcast("after")
    assert await bob.next() == "after"  # nothing in between: "once" arrived once


async def test_on_a_cluster_a_broadcast_whose_reply_is_lost_reaches_remote_clients_once(
    make_manager: ManagerFactory, redis_cluster: RedisClusterServers, namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Cluster client retried too (three times, by default). A proxy cannot stand in
    front of a Cluster (its nodes hand out their own addresses), so the reply is lost in
    the client: the server ran the SPUBLISH and answered; the answer is read, then thrown
    away as the connection failing."""
    options: dict[str, Any] = {"redis_url": redis_cluster.url, "redis_cluster": True,
                               "namespace": namespace, **QUIET}
    sender = make_manager(WebSocketConfig(node_id="a", **options))
    owner = make_manager(WebSocketConfig(node_id="b", **options))
    await sender.start()
    await owner.start()
    bob = FakeSocket("bob")
    await owner.connect("bob", bob)

    lose_next_publish = True
    read = ClusterNode.parse_response

    async def lossy(self: ClusterNode, connection: Any, command: str, **kwargs: Any) -> Any:
        nonlocal lose_next_publish
        reply = await read(self, connection, command, **kwargs)
        if command == "SPUBLISH" and lose_next_publish:
            lose_next_publish = False
            raise RedisConnectionError("the reply was lost")
        return reply

    monkeypatch.setattr(ClusterNode, "parse_response", lossy)
    with contextlib.suppress(BroadcastFailedError):
        await sender.broadcast("once")
    assert not lose_next_publish  # the broadcast's SPUBLISH ran, and its reply was lost
    assert await bob.next() == "once"
    await sender.broadcast("after")
    assert await bob.next() == "after"  # nothing in between: "once" arrived once


async def test_after_a_restart_the_first_calls_find_fresh_connections(
    private_redis: RedisServer,
) -> None:
    """With no retry, nothing hides a stale pooled connection: each one a Redis restart
    closed must be replaced when it is taken from the pool, before a command is sent on
    it. redis-py 8 skips that check while its maintenance notifications are on ("auto",
    the default), and a connection the restart closed then failed its next call."""
    client, _ = client_for(WebSocketConfig(redis_url=private_redis.url, redis_pool_size=4))
    try:
        # every pooled connection in use at once: four of them open
        assert await asyncio.gather(*(client.ping() for _ in range(8))) == [True] * 8
        # the loop runs meanwhile, as a replica's does: it reads the server's goodbyes
        await asyncio.to_thread(private_redis.stop, kill=True)
        await asyncio.to_thread(private_redis.start)  # the same port, empty

        for _ in range(8):  # one after another
            assert await client.hlen("nothing") == 0
    finally:
        await client.aclose()


async def test_on_a_cluster_connections_the_server_closed_are_replaced_before_use(
    private_cluster: RedisClusterServers,
) -> None:
    """A Cluster client has no pool check at checkout: redis-py takes a node's free
    connection as it is. A connection the server closed (a restart, a failover, a
    CLIENT KILL) then failed the first call sent on it, once per master. Such a
    connection is now opened again before anything is sent on it."""
    client, _ = client_for(WebSocketConfig(redis_url=private_cluster.url, redis_cluster=True))
    try:
        await client.initialize()
        masters = {client.get_node_from_key(key).name: key
                   for key in (f"key{index}" for index in range(60))}
        assert len(masters) == 3  # a key on each master
        keys = list(masters.values())
        # two calls in flight per master: two connections on each
        assert await asyncio.gather(*(client.get(key) for key in keys * 2)) == [None] * 6

        def close_every_client() -> None:
            for server in private_cluster.nodes:  # redis-cli's own connection is spared
                subprocess.run([cluster_cli(), "-p", str(server.port), "client", "kill",
                                "type", "normal"], check=True, capture_output=True,
                               timeout=10)

        # the loop runs meanwhile, as a replica's does: it reads the server's goodbyes
        await asyncio.to_thread(close_every_client)

        for key in keys * 2:  # one after another: each master's connections, in turn
            assert await client.get(key) is None
    finally:
        await client.aclose()
