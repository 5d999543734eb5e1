"""With several presence buckets a user's seat follows the presence entry in a second
script (SEATS), and nothing orders two nodes' follow-ups for one client. Found by review:
with one device's socket opening on two replicas at once, the replaced socket's seat could
land last, so the seat named a socket presence had replaced; sends and disconnects by user
then missed the live socket, and the seat outlived every socket (the user stayed online).

A seat now names the newest registration of its client: REGISTER gives a connection that
replaces another a later stamp than the one it replaced, and SEATS writes a seat only over
an older one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stabilizer import Identity, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Presence, Seat
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.core import RedisCore
from stabilizer.node.tasks import TaskOwner
from tests.conftest import ManagerFactory
from tests.integration.test_users import QUIET, Tab

pytestmark = pytest.mark.redis


def core_of(manager: WebSocketConnectionManager) -> RedisCore:
    backend = manager.backend
    assert isinstance(backend, RedisBackend)
    return backend.presence._core  # (the follow-ups go through it)


async def test_a_replaced_sockets_late_seat_does_not_replace_the_live_ones(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a registers the client, then its seat follow-up is held; node b's socket of the
    same client replaces a's and seats itself; only then does a's follow-up land."""
    a, b = (make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                         node_id=f"node-{name}", presence_buckets=4, **QUIET))
            for name in "ab")
    await a.start()
    await b.start()
    core = core_of(a)
    follow_seats = core.follow_seats
    held, release, landed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold_register(ops: list[str], op: str) -> None:
        if op == "register":
            held.set()
            await release.wait()
        await follow_seats(ops, op)
        if op == "register":
            landed.set()

    monkeypatch.setattr(core, "follow_seats", hold_register)
    first = Tab(a, "ann/tab", Identity("ann"))
    async with asyncio.timeout(5):
        await held.wait()  # a's REGISTER ran; its seat waits
    live = Tab(b, "ann/tab", Identity("ann"))
    await live.ready()  # b's REGISTER replaced a's entry, and b's seat was written
    release.set()
    async with asyncio.timeout(5):
        await landed.wait()
    located = await b.backend.presence.locate("ann/tab")
    assert located is not None
    assert located.node_id == "node-b"
    seats = await b.get_user_connections("ann")
    assert [(p.node_id, p.conn_id) for p in seats] == [("node-b", located.conn_id)]

    assert await a.disconnect_user("ann", code=4321, reason="banned") >= 1
    assert await live.ws.wait_closed() == (4321, "banned")
    first.task.cancel()
    await asyncio.gather(first.task, live.task, return_exceptions=True)
    async with asyncio.timeout(5):  # released in the background (a bound, not a wait)
        while await a.get_user_connections("ann"):
            await asyncio.sleep(0.02)
    assert await a.get_cluster_user_count() == 0


@pytest.fixture
async def node_a(redis_url: str, namespace: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(Redis.from_url(redis_url), namespace=namespace, owns_client=True,
                           presence_buckets=4)
    tasks = TaskOwner()
    await backend.open("node-a", tasks)
    yield backend
    assert await tasks.stop(2.0) == []
    await backend.aclose()


async def test_a_resync_listing_an_older_socket_keeps_the_newer_ones_seat(
        node_a: RedisBackend) -> None:
    """A socket admitted while the node listed its connections replaced the one listed:
    the resync keeps the newer entry, and now the newer seat too (its follow-up wrote the
    listed socket's seat over it)."""
    now = time.time()
    older = Presence("ann/tab", "node-a", "conn-old", now - 1.0, "ann")
    newer = Presence("ann/tab", "node-a", "conn-new", now, "ann")
    for presence in (older, newer):
        await node_a.presence.register(presence, max_cluster=None, seat=Seat())
    await node_a.liveness.resync([older], listed_at=now - 2.0)
    located = await node_a.presence.locate("ann/tab")
    assert located is not None
    assert located.conn_id == "conn-new"
    assert [p.conn_id for p in await node_a.users.connections("ann")] == ["conn-new"]


async def test_a_connection_that_replaces_a_newer_stamped_one_still_takes_its_seat(
        redis_url: str, namespace: str, node_a: RedisBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes' clocks disagree: the connection registered last opened "before" the one
    it replaced. Presence names the last one; so does the seat, whichever follow-up lands
    last."""
    other = RedisBackend(Redis.from_url(redis_url), namespace=namespace, owns_client=True,
                         presence_buckets=4)
    tasks = TaskOwner()
    await other.open("node-b", tasks)
    try:
        core = node_a.presence._core
        follow_seats = core.follow_seats
        later: list[list[str]] = []

        async def hold(ops: list[str], op: str) -> None:
            later.append(ops)  # node a's seat goes after b's

        now = time.time()
        monkeypatch.setattr(core, "follow_seats", hold)
        await node_a.presence.register(Presence("ann/tab", "node-a", "conn-a", now, "ann"),
                                       max_cluster=None, seat=Seat())
        await other.presence.register(Presence("ann/tab", "node-b", "conn-b", now - 5.0,
                                               "ann"), max_cluster=None, seat=Seat())
        await follow_seats(later[0], "register")
        located = await other.presence.locate("ann/tab")
        assert located is not None
        assert located.conn_id == "conn-b"
        assert [p.conn_id for p in await other.users.connections("ann")] == ["conn-b"]
        assert await other.presence.unregister("ann/tab", "conn-b")
        assert await other.users.count() == 0
    finally:
        assert await tasks.stop(2.0) == []
        await other.aclose()


async def test_a_resync_claiming_another_users_client_drops_that_users_seat(
        redis_url: str, namespace: str, node_a: RedisBackend) -> None:
    """A client id node b holds for bob is claimed by node a's newer connection of ann's
    (admitted while a was cut off): bob's seat goes with bob's entry, as with one bucket."""
    other = RedisBackend(Redis.from_url(redis_url), namespace=namespace, owns_client=True,
                         presence_buckets=4)
    tasks = TaskOwner()
    await other.open("node-b", tasks)
    try:
        now = time.time()
        await other.presence.register(Presence("shared", "node-b", "conn-b", now - 1.0,
                                               "bob"), max_cluster=None, seat=Seat())
        await node_a.liveness.resync([Presence("shared", "node-a", "conn-a", now, "ann")],
                                     claims={"shared"})
        located = await other.presence.locate("shared")
        assert located is not None
        assert located.conn_id == "conn-a"
        assert [p.conn_id for p in await other.users.connections("ann")] == ["conn-a"]
        assert await other.users.connections("bob") == []
        assert await other.users.count() == 1
    finally:
        assert await tasks.stop(2.0) == []
        await other.aclose()
