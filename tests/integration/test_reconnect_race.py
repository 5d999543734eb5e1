"""A client that drops and reconnects (no history) while its old socket is still being
released keeps what its new socket joined: the old socket's release must not end the
memberships and presence the new one wrote (found by bench.presence's reconnect storm:
half of the clients were missing from the channel after it)."""

from __future__ import annotations

import asyncio

from stabilizer import MemoryBackend, WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from stabilizer.config import CloseCode
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket, SlowToClose

__all__ = ["cluster"]  # the fixture, re-exported for pytest


async def test_a_reconnect_during_the_old_release_keeps_its_memberships(
        cluster: Cluster) -> None:
    node = cluster("a")
    await started(node)
    old = SlowToClose("old")
    await node.connect("x", old)
    await node.join_group("x", "room", presence={"gen": 1})
    dropping = asyncio.create_task(node.disconnect("x", code=CloseCode.GOING_AWAY))
    async with asyncio.timeout(5.0):
        await old.closing.wait()  # the old socket is out of the pool, its release under way
    await node.connect("x", FakeSocket("new"))  # the client is back, on a fresh session
    await node.join_group("x", "room", presence={"gen": 2})
    old.release.set()
    async with asyncio.timeout(5.0):
        await dropping
    assert await node.get_group_members("room") == ["x"]
    assert await node.get_presence("room") == {"x": [{"client_id": "x", "meta": {"gen": 2}}]}
    conn = node.get_connection("x")
    assert conn is not None
    assert "room" in conn.groups


async def test_a_reconnect_to_another_node_during_the_old_release_keeps_its_memberships(
        cluster: Cluster) -> None:
    """The same race across replicas: the old socket's node must not end the session the
    client's new socket (on another node) owns: its presence names that socket."""
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    old = SlowToClose("old")
    await a.connect("x", old)
    await a.join_group("x", "room", presence={"gen": 1})
    dropping = asyncio.create_task(a.disconnect("x", code=CloseCode.GOING_AWAY))
    async with asyncio.timeout(5.0):
        await old.closing.wait()
    new = FakeSocket("new")
    await b.connect("x", new)  # back, on the other replica, on a fresh session
    await b.join_group("x", "room", presence={"gen": 2})
    old.release.set()
    async with asyncio.timeout(5.0):
        await dropping
    for node in (a, b):
        assert await node.get_group_members("room") == ["x"]
        assert await node.get_presence("room") == {
            "x": [{"client_id": "x", "meta": {"gen": 2}}]}
    conn = b.get_connection("x")
    assert conn is not None
    assert "room" in conn.groups
    assert new.closed is None


async def test_with_history_a_reconnect_to_another_node_keeps_its_live_session(
        cluster: Cluster) -> None:
    """With history the old socket's release suspends its session (it may resume): it
    must not put the session of the client's newer socket on another node on a clock."""
    options: dict[str, float] = {"history_size": 10, "session_ttl": 0.5}
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    old = SlowToClose("old")
    await a.connect("x", old)
    await a.join_group("x", "room")
    dropping = asyncio.create_task(a.disconnect("x", code=CloseCode.GOING_AWAY))
    async with asyncio.timeout(5.0):
        await old.closing.wait()
    await b.connect("x", FakeSocket("new"))
    await b.join_group("x", "room")
    old.release.set()
    async with asyncio.timeout(5.0):
        await dropping
    # nothing put the live session on a clock (an expiry, or a place on the away list),
    # and a sweep leaves it
    assert not await on_a_clock(b, "x")
    await b.backend.sessions.sweep()
    state = await b.backend.sessions.load("x")
    assert state is not None
    assert state.groups == ["room"]
    assert await b.get_group_members("room") == ["x"]


async def on_a_clock(manager: WebSocketConnectionManager, client_id: str) -> bool:
    """Whether the client's session expires, or the client is on the away list."""
    backend = manager.backend
    if isinstance(backend, MemoryBackend):
        hub = backend.hub
        record = hub.sessions.get(client_id)
        return client_id in hub.away or (record is not None and record.until is not None)
    assert isinstance(backend, RedisBackend)
    client, keys = backend.client, backend.keys
    expiry = await client.pttl(keys.session(client_id))
    return expiry != -1 or await client.zscore(keys.away, client_id) is not None
