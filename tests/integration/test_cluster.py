"""Several managers acting as one: the same scenarios on a shared memory hub and on Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stabilizer import (
    CloseCode,
    ConnectionLimitExceededError,
    InvalidTokenError,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
Cluster = Callable[..., WebSocketConnectionManager]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("cluster", marks=pytest.mark.redis)])
async def cluster(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Cluster]:
    """Return a factory of started-on-demand managers that share one backend store.

    ``cluster``: a real three-master Redis Cluster, presence over 4 hash-tagged buckets.
    """
    hub = MemoryHub()
    made: list[WebSocketConnectionManager] = []
    redis: dict[str, object] = {}
    if request.param == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url")}
    elif request.param == "cluster":
        redis = {"redis_url": request.getfixturevalue("redis_cluster").url,
                 "redis_cluster": True, "presence_buckets": 4}

    def node(node_id: str, **overrides: object) -> WebSocketConnectionManager:
        options: dict[str, object] = {**QUIET, **redis, "node_id": node_id,
                                      "namespace": namespace}
        options.update(overrides)
        if redis:
            manager = WebSocketConnectionManager(WebSocketConfig(**options))  # type: ignore[arg-type]
        else:
            manager = WebSocketConnectionManager(
                WebSocketConfig(**options), backend=MemoryBackend(hub)  # type: ignore[arg-type]
            )
        made.append(manager)
        return manager

    yield node
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


async def started(*managers: WebSocketConnectionManager) -> None:
    for manager in managers:
        await manager.start()


def unwrapped(frame: Any) -> Any:
    """A message's data: history frames carry it as JSON text under "data"."""
    if isinstance(frame, dict) and "stream" in frame:
        return json.loads(frame["data"])
    return frame


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
async def test_broadcast_from_one_node_reaches_clients_on_all_nodes(
    cluster: Cluster, history: bool
) -> None:
    options = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0} if history else {}
    a, b, c = cluster("a", **options), cluster("b", **options), cluster("c", **options)
    await started(a, b, c)
    socks = {name: FakeSocket(name) for name in ("on-a", "on-b", "on-c", "sender")}
    await a.connect("on-a", socks["on-a"])
    await b.connect("on-b", socks["on-b"])
    await c.connect("on-c", socks["on-c"])
    await b.connect("sender", socks["sender"])

    result = await a.broadcast({"n": 1}, exclude_client="sender")

    assert result.remote_nodes == 2
    for name in ("on-a", "on-b", "on-c"):
        assert unwrapped(await socks[name].next_json()) == {"n": 1}
    # a sentinel on the same stream: the excluded client, on another node than the sender's
    # manager, gets it as its first frame, so the first broadcast never reached it
    await a.broadcast({"n": 2})
    assert unwrapped(await socks["sender"].next_json()) == {"n": 2}


async def test_send_to_client_reaches_another_node(cluster: Cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    bob = FakeSocket("bob")
    await b.connect("bob:1*", bob)
    assert await a.send_to_client("bob:1*", {"hi": "bob"}) is True
    assert await bob.next_json() == {"hi": "bob"}
    assert await a.send_to_client("nobody", "x") is False


async def test_connecting_an_id_live_on_another_node_closes_the_old_socket(
    cluster: Cluster,
) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    old, new = FakeSocket("old"), FakeSocket("new")
    await a.connect("alice", old)
    await b.connect("alice", new)
    code, _ = await old.wait_closed()
    assert code == CloseCode.REPLACED
    assert await a.locate_client("alice") == "b"
    assert not a.is_connected("alice")
    assert await a.send_to_client("alice", "where?")
    assert await new.next() == "where?"
    assert await a.get_cluster_connection_count() == 1


async def test_cluster_counts_and_listing(cluster: Cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    for i in range(5):
        await (a if i % 2 else b).connect(f"user-{i}", FakeSocket())
    assert a.get_connection_count() == 2  # local only, like the seed
    assert await a.get_cluster_connection_count() == 5
    listed = {p.client_id: p.node_id async for p in b.get_cluster_connections()}
    assert listed == {f"user-{i}": ("a" if i % 2 else "b") for i in range(5)}
    assert await b.locate_client("user-1") == "a"
    assert await b.locate_client("ghost") is None
    await a.disconnect("user-1")
    assert await b.locate_client("user-1") is None


async def test_token_from_one_node_validates_once_on_another(cluster: Cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    token = a.generate_reconnect_token("alice")
    outcomes = await asyncio.gather(
        a.validate_reconnect_token(token), b.validate_reconnect_token(token),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["InvalidTokenError", "str"]
    assert "alice" in outcomes
    with pytest.raises(InvalidTokenError):
        await b.validate_reconnect_token(token)


async def test_cluster_connection_limit(cluster: Cluster) -> None:
    one_slot = {"max_cluster_connections": 2, "presence_buckets": 1}  # an atomic limit
    a, b = cluster("a", **one_slot), cluster("b", **one_slot)
    await started(a, b)
    await a.connect("one", FakeSocket())
    await b.connect("two", FakeSocket())
    with pytest.raises(ConnectionLimitExceededError):
        await a.connect("three", FakeSocket())
    assert not a.is_connected("three")
    await b.connect("one", FakeSocket())  # moving an existing client is allowed


async def test_a_crashed_node_is_reaped_by_the_survivors(cluster: Cluster) -> None:
    a, b = cluster("a", node_ttl=1.0), cluster("b", node_ttl=1.0)
    await started(a, b)
    for i in range(3):
        await b.connect(f"b{i}", FakeSocket())
    await a.connect("moved", FakeSocket())
    assert await a.get_cluster_connection_count() == 4

    # SIGKILL leaves no goodbye: stop b's loops without unregistering anything.
    loops = [task for task in asyncio.all_tasks()
             if task.get_name().startswith("stabilizer-loop-")
             and task.get_name().endswith(f":{b.node_id}")]
    assert len(loops) == 3  # heartbeat, maintenance, listener
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)

    async with asyncio.timeout(15):
        while await a.get_cluster_connection_count() != 1:
            await asyncio.sleep(0.1)  # bounded poll: reaping is driven by the TTL clock
    assert await a.locate_client("moved") == "a"
    assert "b" not in await a.get_nodes()


async def test_concurrent_direct_sends_across_nodes_all_arrive(cluster: Cluster) -> None:
    """Many send_to_client calls in flight at once (pipelined together on Redis): each
    gets its own answer, and every message arrives."""
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    socks = [FakeSocket(f"c{i}") for i in range(50)]
    for i, sock in enumerate(socks):
        await b.connect(f"c{i}", sock)
    sends = [a.send_to_client(f"c{i % 50}", f"m{i}") for i in range(500)]
    sends.append(a.send_to_client("nobody", "lost"))
    outcomes = await asyncio.gather(*sends)
    assert outcomes == [True] * 500 + [False]
    for i, sock in enumerate(socks):
        got = [await sock.next() for _ in range(10)]
        assert sorted(got) == sorted(f"m{j}" for j in range(i, 500, 50))


@pytest.mark.parametrize("batch", [0, -1, True, 2.5, "10"])
async def test_a_listing_batch_that_is_not_a_positive_count_is_refused(
        cluster: Cluster, batch: object) -> None:
    """Redis answered a batch of 0 with a syntax error, raised as is; the embedded
    backend ignored the batch altogether."""
    a = cluster("a")
    await started(a)
    await a.connect("ann", FakeSocket())
    with pytest.raises(ValueError, match="batch"):  # at the call, before any iteration
        a.get_cluster_connections(batch)  # type: ignore[arg-type]
    assert [seen.client_id async for seen in a.get_cluster_connections(1)] == ["ann"]
