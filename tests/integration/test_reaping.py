"""Reaping a node that is alive (the fault checker's seed 1817568199, history on).

A node whose keepalives stop reaching Redis for longer than node_ttl (Redis paused, the
link stalled) is taken for dead: a survivor removes its presence entries, then its
liveness entry. When the node refreshes its entry between those two steps (and may have
registered its clients again just before the entries went), the survivor's second step
used to keep the entry as a live node's: the node never learned that its clients' presence
was gone, a client that connected elsewhere found no earlier socket to kick, and both
sockets stayed open. The second step now always removes it, so the node's next keepalive
finds itself gone and registers its connections again.

A keepalive between the two steps reported nothing either, and that node's sweep ended the
sessions the reaper had put on the away list, group memberships included; a settle then
dropped the node's local memberships to agree, and the rejoin after the second step had
nothing left to give back. The reaper now claims the node in the script that finds it
expired, before removing anything: the node's keepalives report it rejoined from then on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig
from stabilizer.backends.base import Liveness, Presence, Resynced
from stabilizer.backends.redis import RedisBackend
from stabilizer.errors import BackendUnavailable
from stabilizer.node.tasks import TaskOwner
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def test_a_node_that_refreshed_while_it_was_reaped_learns_it_at_its_next_keepalive(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = TaskOwner()
    reaper, paused = (RedisBackend(Redis.from_url(redis_url), namespace=namespace,
                                   owns_client=True) for _ in range(2))
    store = Redis.from_url(redis_url)
    try:
        await reaper.open("node-a", tasks)
        await paused.open("node-x", tasks)
        assert (await paused.liveness.keepalive(30)).rejoined is True
        await paused.presence.register(Presence("c0", "node-x", "conn-1", time.time()),
                                       max_cluster=None)
        await reaper.liveness.keepalive(30)
        await store.zadd(reaper.keys.nodes, {"node-x": 0})  # its keepalives stopped arriving

        reap_clients = reaper.liveness._reap_clients
        refreshed: list[bool] = []

        async def then_it_refreshes(node: str, session_ttl: float) -> Any:
            removed = await reap_clients(node, session_ttl)
            # node-x's keepalive lands between the reaper's two steps: its entry is still
            # there, but the reaper's claim tells it that it is being reaped
            refreshed.append((await paused.liveness.keepalive(30)).rejoined)
            return removed

        monkeypatch.setattr(reaper.liveness, "_reap_clients", then_it_refreshes)
        assert (await reaper.liveness.keepalive(30)).reaped == ("node-x",)
        assert refreshed == [True]
        assert await reaper.presence.locate("c0") is None

        assert (await paused.liveness.keepalive(30)).rejoined is True
        assert await reaper.liveness.nodes() == ["node-a", "node-x"]
    finally:
        await store.aclose()
        assert await tasks.stop(2.0) == []
        await reaper.aclose()
        await paused.aclose()



async def test_a_claim_whose_reaper_died_is_left_to_it_then_lapses(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper that claimed a node and died before reaping it: no other survivor reaps the
    node while the claim holds; the node reports itself reaped until the claim lapses, then
    drops it (its keepalives would otherwise ask for a resync each time, for good)."""
    tasks = TaskOwner()
    reaper, other, paused = (RedisBackend(Redis.from_url(redis_url), namespace=namespace,
                                          owns_client=True) for _ in range(3))
    store = Redis.from_url(redis_url)
    try:
        await reaper.open("node-a", tasks)
        await other.open("node-b", tasks)
        await paused.open("node-x", tasks)
        await paused.liveness.keepalive(30)
        await paused.presence.register(Presence("c0", "node-x", "conn-1", time.time()),
                                       max_cluster=None)
        await other.liveness.keepalive(30)
        await store.zadd(reaper.keys.nodes, {"node-x": 0})  # its keepalives stopped arriving

        async def dies(node: str, session_ttl: float) -> int:
            raise BackendUnavailable("the reaper lost Redis")

        monkeypatch.setattr(reaper.liveness, "_reap_clients", dies)
        with pytest.raises(BackendUnavailable):
            await reaper.liveness.keepalive(2.0)  # claims node-x for 2 s
        assert (await other.liveness.keepalive(30)).reaped == ()

        assert (await paused.liveness.keepalive(30)).rejoined is True
        async with asyncio.timeout(10.0):  # a bounded poll of the claim's lapse
            while (await paused.liveness.keepalive(30)).rejoined:
                await asyncio.sleep(0.05)
        assert (await paused.liveness.keepalive(30)).rejoined is False
        assert await store.zcard(reaper.keys.reaped) == 0
        located = await other.presence.locate("c0")
        assert located is not None
        assert located.node_id == "node-x"
    finally:
        await store.aclose()
        assert await tasks.stop(2.0) == []
        for backend in (reaper, other, paused):
            await backend.aclose()

async def test_a_live_node_reaped_while_it_settles_gives_back_its_clients_groups(
        redis_url: str, namespace: str, make_manager: ManagerFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node b stalls past its deadline; node a reaps it. Between a's removal of b's presence
    (its clients' sessions put on the away list) and the end of the reap, b's keepalive
    lands again and b settles (its subscription dropped meanwhile): its sweep ends those
    sessions, memberships included. The settle must give them back (b was reaped), not
    drop b's local memberships to agree with what the sweep left."""
    options: dict[str, Any] = {"redis_url": redis_url, "namespace": namespace,
                               "node_ttl": 4.0, "op_timeout": 1.0, **QUIET}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    store = Redis.from_url(redis_url)
    clients = {f"b{i}": FakeSocket(f"b{i}") for i in range(3)}
    stalled = True
    resyncs: asyncio.Queue[None] = asyncio.Queue()  # b's resyncs, each once it ended

    b_keepalive, b_resync = b.backend.liveness.keepalive, b.backend.liveness.resync

    async def stalls(*args: Any, **kwargs: Any) -> Liveness:
        result = await b_keepalive(*args, **kwargs)
        if stalled:  # as if it had not reached Redis: b's deadline stays in the past
            await store.zadd(b.backend.keys.nodes, {"b": 0})
        return result

    async def resynced(*args: Any, **kwargs: Any) -> Resynced:
        result = await b_resync(*args, **kwargs)
        resyncs.put_nowait(None)
        return result

    reap_clients = a.backend.liveness._reap_clients

    async def reap_while_b_settles(node: str, session_ttl: float) -> int:
        nonlocal stalled
        removed = await reap_clients(node, session_ttl)
        while not resyncs.empty():
            resyncs.get_nowait()
        stalled = False  # b's keepalives land again, before the reap ends
        await store.client_kill_filter(_type="pubsub")  # and b settles at its next step
        async with asyncio.timeout(3.0):
            await resyncs.get()
        return removed

    try:
        await a.start()
        await b.start()
        for client_id, sock in clients.items():
            await b.connect(client_id, sock)
            await b.join_group(client_id, "room")
        monkeypatch.setattr(b.backend.liveness, "keepalive", stalls)
        monkeypatch.setattr(b.backend.liveness, "resync", resynced)
        monkeypatch.setattr(a.backend.liveness, "_reap_clients", reap_while_b_settles)
        await store.zadd(b.backend.keys.nodes, {"b": 0})  # b's keepalives stop arriving

        async with asyncio.timeout(10.0):  # a reaps b; b settles inside the reap
            while stalled:
                await asyncio.sleep(0.05)
        async with asyncio.timeout(10.0):  # b re-registers once the reap ended
            await resyncs.get()

        assert sorted(await a.get_group_members("room")) == sorted(clients)
        for client_id in clients:
            connection = b.get_connection(client_id)
            assert connection is not None
            assert connection.groups == {"room"}
        await a.send_to_group("room", "hello")
        for sock in clients.values():
            await sock.expect("hello")
            assert sock.closed is None
    finally:
        await store.aclose()
