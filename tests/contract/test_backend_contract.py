"""One Backend contract, run against every backend: memory and a real Redis server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stabilizer import ConnectionLimitExceededError, MemoryBackend, MemoryHub, Presence
from stabilizer.backends.base import Backend, Resynced
from stabilizer.backends.redis import RedisBackend
from stabilizer.errors import BackendNotReached
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.keyring import new_shared_key
from stabilizer.pure.wire import Envelope, Kind, decode, encode

NodeFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("cluster", marks=pytest.mark.redis)])
async def open_node(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[NodeFactory]:
    """Open backends that share one store, as nodes of one cluster would.

    ``cluster`` is a real three-master Redis Cluster with sharded pub/sub and presence
    spread over 4 hash-tagged buckets (pass buckets=1 for what needs one slot).
    """
    opened: list[Backend] = []
    tasks = TaskOwner()
    hub = MemoryHub()
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url

    async def factory(node_id: str, *, buckets: int | None = None,
                      events: bool = False, sessions: bool = False) -> Backend:
        backend: Backend
        if request.param == "memory":
            backend = MemoryBackend(hub)
        elif request.param == "redis":
            from redis.asyncio import Redis

            backend = RedisBackend(Redis.from_url(url), namespace=namespace,
                                   owns_client=True, presence_buckets=buckets or 1)
        else:
            from redis.asyncio.cluster import RedisCluster

            backend = RedisBackend(RedisCluster.from_url(url), namespace=namespace,
                                   owns_client=True, presence_buckets=buckets or 4)
        await backend.open(node_id, tasks, events=events, sessions=sessions)
        opened.append(backend)
        return backend

    yield factory
    assert await tasks.stop(2.0) == []
    for backend in opened:
        await backend.aclose()


class Inbox:
    """Consume a backend's deliveries into a queue while the test runs."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Inbox:
        async def pump() -> None:
            async for raw in self.backend.routing.deliveries():
                self.queue.put_nowait(raw)

        self.task = asyncio.create_task(pump())
        async with asyncio.timeout(5):
            await self.backend.routing.subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def next(self, timeout: float = 3.0) -> Envelope:
        async with asyncio.timeout(timeout):
            return decode(await self.queue.get())


def presence(client_id: str, node_id: str, conn_id: str = "c0000000000000001") -> Presence:
    return Presence(client_id, node_id, conn_id, time.time())


async def test_register_locate_count_and_unregister(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    reg = await a.presence.register(presence("alice", "node-a", "conn-1"), max_cluster=None)
    assert reg.previous is None
    located = await a.presence.locate("alice")
    assert located is not None
    assert (located.node_id, located.conn_id) == ("node-a", "conn-1")
    assert await a.presence.count() == 1
    assert await a.presence.unregister("alice", "someone-else") is False
    assert await a.presence.count() == 1
    assert await a.presence.unregister("alice", "conn-1") is True
    assert await a.presence.locate("alice") is None
    assert await a.presence.count() == 0


async def test_reregistering_on_another_node_kicks_the_old_socket(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.presence.register(presence("alice", "node-a", "old-conn"), max_cluster=None)
    async with Inbox(a) as inbox_a:
        reg = await b.presence.register(presence("alice", "node-b", "new-conn"), max_cluster=None)
        kick = await inbox_a.next()
    assert reg.previous is not None
    assert (reg.previous.node_id, reg.previous.conn_id) == ("node-a", "old-conn")
    assert (kick.kind, kick.target, kick.ref, kick.origin) == (
        Kind.KICK, "alice", "old-conn", "node-b"
    )
    located = await a.presence.locate("alice")
    assert located is not None
    assert located.node_id == "node-b"
    # the old node's late unregister must not remove the new registration
    assert await a.presence.unregister("alice", "old-conn") is False
    assert await a.presence.count() == 1


async def test_route_reaches_only_the_owner_node(open_node: NodeFactory) -> None:
    a, b, c = await open_node("node-a"), await open_node("node-b"), await open_node("node-c")
    await b.presence.register(presence("bob", "node-b"), max_cluster=None)
    envelope = encode(Envelope(Kind.DIRECT, "node-a", "bob", "hello"))
    async with Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        assert await a.routing.route("bob", envelope) is True
        assert await a.routing.route("nobody", envelope) is False
        got = await inbox_b.next()
        assert (got.kind, got.target, got.payload) == (Kind.DIRECT, "bob", "hello")
        assert inbox_c.queue.empty()


async def test_to_node_reaches_that_node_only(open_node: NodeFactory) -> None:
    a, b, c = await open_node("node-a"), await open_node("node-b"), await open_node("node-c")
    envelope = encode(Envelope(Kind.ACK, "node-a", None, None, ref="0123456789abcdef"))
    async with Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        assert await a.routing.to_node("node-b", envelope) is True
        assert await a.routing.to_node("node-gone", envelope) is False
        got = await inbox_b.next()
        assert (got.kind, got.origin, got.ref) == (Kind.ACK, "node-a", "0123456789abcdef")
        assert inbox_c.queue.empty()


async def test_publish_reaches_every_other_node_once(open_node: NodeFactory) -> None:
    a, b, c = await open_node("node-a"), await open_node("node-b"), await open_node("node-c")
    envelope = encode(Envelope(Kind.BROADCAST, "node-a", None, b"\x00bin"))
    async with Inbox(a), Inbox(b) as inbox_b, Inbox(c) as inbox_c:
        reached = await a.routing.publish(envelope)
        assert reached == 2
        for inbox in (inbox_b, inbox_c):
            got = await inbox.next()
            assert (got.kind, got.payload) == (Kind.BROADCAST, b"\x00bin")


async def test_cluster_limit_is_atomic(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a", buckets=1), await open_node("node-b", buckets=1)
    attempts = [
        (a if i % 2 else b).presence.register(presence(f"c{i}", "node-a" if i % 2 else "node-b",
                                              f"conn{i}"), max_cluster=5)
        for i in range(20)
    ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, ConnectionLimitExceededError)]
    assert (len(admitted), len(refused)) == (5, 15)
    assert await a.presence.count() == 5
    # replacing an already present client is not a new connection
    present = [p.client_id async for p in a.presence.scan()]
    await a.presence.register(presence(present[0], "node-a", "conn-again"), max_cluster=5)
    assert await a.presence.count() == 5


async def test_a_token_nonce_is_consumed_exactly_once(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    expires = time.time() + 60
    outcomes = await asyncio.gather(
        *(node.tokens.consume("nonce-1", expires) for node in (a, b, a, b))
    )
    assert sorted(outcomes) == [False, False, False, True]
    assert await a.tokens.consume("nonce-2", expires) is True


async def test_every_node_gets_the_same_shared_secret(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    keys_a = await a.tokens.share_keys(new_shared_key(), {})
    keys_b = await b.tokens.share_keys(new_shared_key(), {})
    assert keys_a.signing == keys_b.signing
    assert len(keys_a.signing) >= 32


async def test_scan_returns_every_client_in_batches(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    for i in range(1200):
        node, owner = (a, "node-a") if i % 3 else (b, "node-b")
        await node.presence.register(presence(f"client:{i}*", owner, f"conn{i}"), max_cluster=None)
    seen = [p async for p in a.presence.scan(batch=100)]
    assert len(seen) == 1200
    assert {p.client_id for p in seen} == {f"client:{i}*" for i in range(1200)}
    assert sum(1 for p in seen if p.node_id == "node-b") == 400


async def test_a_dead_node_is_reaped_but_moved_clients_stay(open_node: NodeFactory) -> None:
    a, dead = await open_node("node-a"), await open_node("node-dead")
    await dead.liveness.keepalive(0.2)
    await a.liveness.keepalive(30)
    for i in range(3):
        await dead.presence.register(presence(f"d{i}", "node-dead", f"conn{i}"), max_cluster=None)
    # d0 reconnected to node-a meanwhile: reaping node-dead must not remove it
    await a.presence.register(presence("d0", "node-a", "conn-new"), max_cluster=None)

    reaped: tuple[str, ...] = ()
    async with asyncio.timeout(5):
        while "node-dead" not in reaped:  # bounded poll of a clock-driven expiry
            reaped = (await a.liveness.keepalive(30)).reaped
            await asyncio.sleep(0.05)

    assert await a.presence.locate("d1") is None
    assert await a.presence.locate("d2") is None
    moved = await a.presence.locate("d0")
    assert moved is not None
    assert moved.node_id == "node-a"
    assert await a.liveness.nodes() == ["node-a"]


async def test_keepalive_reports_a_node_that_vanished(open_node: NodeFactory) -> None:
    a = await open_node("node-a")
    first = await a.liveness.keepalive(30)
    second = await a.liveness.keepalive(30)
    assert first.rejoined is True
    assert second.rejoined is False


async def test_resync_restores_presence_except_what_moved(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    mine = [presence(f"a{i}", "node-a", f"conn{i}") for i in range(3)]
    await b.presence.register(presence("a2", "node-b", "conn-b"), max_cluster=None)
    resynced = await a.liveness.resync(mine)
    assert resynced == Resynced(lost=("a2",))
    for p in mine[:2]:
        located = await a.presence.locate(p.client_id)
        assert located is not None
        assert located.conn_id == p.conn_id


async def test_unregister_node_removes_all_of_its_presence(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.liveness.keepalive(30)
    await b.liveness.keepalive(30)
    for i in range(5):
        await a.presence.register(presence(f"a{i}", "node-a", f"c{i}"), max_cluster=None)
    await b.presence.register(presence("b0", "node-b"), max_cluster=None)
    await a.liveness.unregister_node()
    assert await b.presence.count() == 1
    assert await b.liveness.nodes() == ["node-b"]


async def test_resync_forgets_entries_the_node_no_longer_holds(open_node: NodeFactory) -> None:
    """An unregister lost during an outage leaves an entry behind; resync removes it."""
    a, b = await open_node("node-a"), await open_node("node-b")
    for client in ("kept", "gone", "moved"):
        await a.presence.register(presence(client, "node-a", f"conn-{client}"), max_cluster=None)
    await b.presence.register(presence("moved", "node-b", "conn-b"), max_cluster=None)
    resynced = await a.liveness.resync([presence("kept", "node-a", "conn-kept")])
    assert resynced == Resynced()
    assert await a.presence.locate("gone") is None
    kept, moved = await a.presence.locate("kept"), await a.presence.locate("moved")
    assert kept is not None
    assert kept.node_id == "node-a"
    assert moved is not None
    assert moved.node_id == "node-b"
    assert await a.presence.count() == 2


async def test_a_closed_backend_refuses_every_call(open_node: NodeFactory) -> None:
    """Once closed, a backend reaches nothing (BackendNotReached: nothing took effect). A
    Redis client reconnects on demand: a call let through would open a connection that
    nothing closes any more."""
    a = await open_node("node-a")
    await a.presence.register(presence("alice", "node-a"), max_cluster=None)
    await a.aclose()
    envelope = encode(Envelope(Kind.BROADCAST, "node-a", None, "late"))
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: a.presence.count(), lambda: a.presence.locate("alice"),
        lambda: a.routing.publish(envelope), lambda: a.routing.route("alice", envelope),
        lambda: a.tokens.share_keys(new_shared_key(), {}), lambda: a.liveness.nodes(),
        lambda: a.presence.register(presence("bob", "node-a"), max_cluster=None),
    ]
    for call in calls:
        with pytest.raises(BackendNotReached):
            await call()
    with pytest.raises(BackendNotReached):
        await anext(aiter(a.routing.deliveries()))
    assert a.available is False
