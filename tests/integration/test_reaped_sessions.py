"""The sessions of a node reaped while alive (history on).

Node b stalls past node_ttl; node a takes it for dead and reaps it: b's clients lose their
presence and their sessions go on the away list, each session hash with an expiry
(SUSPEND). b was alive all along: its next keepalive finds the reap, and it registers its
connections again and gives back their memberships. Nothing held their sessions again: the
expiry stayed on the hashes of clients still connected, so their sessions vanished under
them, and a resume after that began afresh (``recovered: false``, the groups and user data
gone). The settle now holds each session again as its open did (no expiry, held by the
connection), in every key layout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Liveness, Resynced
from stabilizer.backends.redis import RedisBackend
from tests.conftest import ManagerFactory
from tests.integration.test_groups_history import HISTORY, resume_on
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
FAST: dict[str, Any] = {"node_ttl": 1.5, "op_timeout": 0.5}  # maintenance every 0.5 s

Node = Callable[[str], WebSocketConnectionManager]


@pytest.fixture(params=["namespace", "buckets", "spread", "cluster"])
async def layout(request: pytest.FixtureRequest, namespace: str, make_manager: ManagerFactory,
                 ) -> AsyncIterator[tuple[Node, Redis | RedisCluster]]:
    """Build nodes on one store in a key layout: the namespace's slot; presence over two
    buckets; spread keys on one server; a three-master Cluster (spread, four buckets).
    Also yield a plain client of the store."""
    options: dict[str, Any] = {}
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        options = {"redis_cluster": True, "presence_buckets": 4}
        store: Redis | RedisCluster = RedisCluster.from_url(url)
    else:
        url = request.getfixturevalue("redis_url")
        store = Redis.from_url(url)
        if request.param == "buckets":
            options = {"presence_buckets": 2}
        elif request.param == "spread":
            options = {"redis_spread_keys": True}

    def node(node_id: str) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=url, namespace=namespace,
                                            node_id=node_id, **QUIET, **FAST, **HISTORY,
                                            **options))
    try:
        yield node, store
    finally:
        await store.aclose()


def reap_alive(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
               store: Redis | RedisCluster, monkeypatch: pytest.MonkeyPatch,
               ) -> tuple[asyncio.Event, asyncio.Event, list[int]]:
    """From now on b's keepalives leave its deadline in the past (they do not reach the
    store) until a begins to reap it. Return an event set once a's reap of b ended, one
    set when b's first step that began after a resync started after the reap (so that
    resync's settle is over), and the TTLs (ms) of alice's session right after the reap."""
    reaped, settled, resynced = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ttls: list[int] = []
    stalled = True
    b_keepalive, b_resync = b.backend.liveness.keepalive, b.backend.liveness.resync
    a_liveness: Any = a.backend.liveness
    reap_node = a_liveness._reap_node
    assert isinstance(b.backend, RedisBackend)
    nodes, session = b.backend.keys.nodes, b.backend.keys.session("alice")

    async def stalls(*args: Any, **kwargs: Any) -> Liveness:
        if resynced.is_set():
            settled.set()
        result = await b_keepalive(*args, **kwargs)
        if stalled:
            await store.zadd(nodes, {"b": 0})
        return result

    async def resync(*args: Any, **kwargs: Any) -> Resynced:
        after = reaped.is_set()
        result = await b_resync(*args, **kwargs)
        if after:
            resynced.set()
        return result

    async def reap(node: str, session_ttl: float) -> None:
        nonlocal stalled
        stalled = False  # b's keepalives land again: it learns of the claim
        await reap_node(node, session_ttl)
        ttls.append(int(await store.pttl(session)))
        reaped.set()

    monkeypatch.setattr(b.backend.liveness, "keepalive", stalls)
    monkeypatch.setattr(b.backend.liveness, "resync", resync)
    monkeypatch.setattr(a_liveness, "_reap_node", reap)
    return reaped, settled, ttls


async def test_a_live_client_of_a_reaped_node_keeps_its_session(
        layout: tuple[Node, Redis | RedisCluster], monkeypatch: pytest.MonkeyPatch) -> None:
    node, store = layout
    a, b = node("a"), node("b")
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await b.connect("alice", alice)
    await b.join_group("alice", "room")
    await b.set_user_data("alice", "cart", [1, 2, 3])
    assert isinstance(b.backend, RedisBackend)
    session = b.backend.keys.session("alice")
    assert int(await store.pttl(session)) == -1  # live: no expiry

    reaped, settled, ttls = reap_alive(a, b, store, monkeypatch)
    await store.zadd(b.backend.keys.nodes, {"b": 0})  # b's keepalives stop arriving
    async with asyncio.timeout(10.0):
        await reaped.wait()
    assert ttls[0] > 0  # the reap put the session on its way out
    async with asyncio.timeout(10.0):  # b re-registered alice and settled
        await settled.wait()

    assert int(await store.pttl(session)) == -1, "the live client's session still expires"
    assert sorted(await a.get_group_members("room")) == ["alice"]

    await b.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    _, (recovered, _, _) = await resume_on(a, "alice", {})
    assert recovered is True
    connection = a.get_connection("alice")
    assert connection is not None
    assert connection.groups == {"room"}
    assert await a.get_user_data("alice", "cart") == [1, 2, 3]
