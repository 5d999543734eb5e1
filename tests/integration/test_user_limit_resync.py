"""max_connections_per_user after an outage: "a user holds at most that many connections
across the cluster" holds when connections admitted while their node was cut off from Redis
re-register at the resync. The oldest connections keep their seats and the newest close with
USER_LIMIT (4004), whichever node resyncs first.

Each node reaches Redis through a proxy of its own, so one can be cut off (a partition) while
Redis and the other nodes carry on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import CloseCode, Identity, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.wire import Envelope, Kind, close_body, encode
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until
from tests.integration.test_store_incarnation import resyncs
from tests.integration.test_users import Tab
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
#: A node retries Redis within node_ttl / 3 (here 0.5 s) once it is reachable again.
FAST: dict[str, Any] = {"node_ttl": 1.5, "op_timeout": 0.5}
#: Bounds, not waits: recovery takes about a second; a loaded machine gets the rest.
RECOVERY = 20.0

Node = Callable[[str, TcpProxy, int], WebSocketConnectionManager]


@pytest.fixture
async def proxies(private_redis: RedisServer) -> AsyncIterator[list[TcpProxy]]:
    made = [TcpProxy(private_redis.port) for _ in range(3)]
    for proxy in made:
        await proxy.start()
    yield made
    for proxy in made:
        await proxy.aclose()


@pytest.fixture
def node(namespace: str, make_manager: ManagerFactory) -> Node:
    def build(node_id: str, proxy: TcpProxy, limit: int) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                            node_id=node_id, max_connections_per_user=limit,
                                            **QUIET, **FAST))
    return build


async def tab(manager: WebSocketConnectionManager, client_id: str) -> Tab:
    opened = Tab(manager, client_id, Identity("ann"))
    await opened.ready()
    return opened


async def resynced(manager: WebSocketConnectionManager, tabs: dict[str, Tab]) -> None:
    """Wait until each tab is closed or holds a seat again (its node resynced)."""
    async def done() -> bool:
        seated = set(await seats(manager))
        return all(t.ws.closed is not None or cid in seated for cid, t in tabs.items())
    await until(done, RECOVERY)


async def seats(manager: WebSocketConnectionManager) -> list[str]:
    return [p.client_id for p in await manager.get_user_connections("ann")]


async def leave(*tabs: Tab) -> None:
    for opened in tabs:
        opened.task.cancel()
    await asyncio.gather(*(opened.task for opened in tabs), return_exceptions=True)


async def closed_for_the_limit(opened: Tab) -> None:
    code, reason = await opened.ws.wait_closed(timeout=RECOVERY)
    assert code == CloseCode.USER_LIMIT
    assert "retry_ms" in json.loads(reason or "{}")  # as a refused connect's


async def test_a_tab_admitted_while_its_node_was_cut_off_closes_if_the_user_is_full(
    proxies: list[TcpProxy], node: Node,
) -> None:
    a, b = node("a", proxies[0], 1), node("b", proxies[1], 1)
    await a.start()
    await b.start()
    first = await tab(b, "ann/1")
    await proxies[0].cut()
    late = await tab(a, "ann/2")  # admitted locally: a cannot ask the store
    await proxies[0].restore()

    await resynced(b, {"ann/2": late})
    assert await seats(b) == ["ann/1"]
    await closed_for_the_limit(late)
    assert first.ws.closed is None
    assert not a.is_connected("ann/2")
    assert await seats(b) == ["ann/1"]
    await leave(first, late)


async def test_an_older_tab_that_resyncs_keeps_its_seat_and_the_newer_one_closes(
    proxies: list[TcpProxy], node: Node,
) -> None:
    a, b = node("a", proxies[0], 1), node("b", proxies[1], 1)
    await a.start()
    await b.start()
    await proxies[0].cut()
    older = await tab(a, "ann/1")  # not recorded: b's connect finds room
    newer = await tab(b, "ann/2")
    await proxies[0].restore()

    await resynced(b, {"ann/1": older})
    assert await seats(b) == ["ann/1"]
    await closed_for_the_limit(newer)
    assert older.ws.closed is None
    assert not b.is_connected("ann/2")
    await leave(older, newer)


async def test_the_limit_holds_when_nodes_resync_at_once_and_the_oldest_tabs_stay(
    proxies: list[TcpProxy], node: Node,
) -> None:
    a, b, c = (node("a", proxies[0], 2), node("b", proxies[1], 2),
               node("c", proxies[2], 2))
    for manager in (a, b, c):
        await manager.start()
    for proxy in proxies:
        await proxy.cut()
    tabs = [await tab((a, b, c)[i % 3], f"ann/{i}") for i in range(6)]  # oldest first
    await asyncio.gather(*(proxy.restore() for proxy in proxies))

    await resynced(c, {f"ann/{i}": opened for i, opened in enumerate(tabs)})
    assert await seats(c) == ["ann/0", "ann/1"]

    for opened in tabs[2:]:
        await closed_for_the_limit(opened)
    assert [opened.ws.closed for opened in tabs[:2]] == [None, None]
    assert [m.is_connected(f"ann/{i}") for i, m in enumerate((a, b, c, a, b, c))] == [
        True, True, False, False, False, False]
    await leave(*tabs)


async def test_a_close_naming_an_earlier_connection_leaves_the_clients_newer_one_open(
    proxies: list[TcpProxy], node: Node,
) -> None:
    """What a resync sends another node past the limit names the connection, so a client
    that reconnected meanwhile keeps its new socket."""
    a, b = node("a", proxies[0], 1), node("b", proxies[1], 1)
    await a.start()
    await b.start()
    socket = FakeSocket("alice")
    await a.connect("alice", socket)
    located = await b.backend.presence.locate("alice")
    assert located is not None

    def close(conn_id: str, reason: str) -> bytes:
        return encode(Envelope(Kind.CLIENT_CLOSE, "b", "alice",
                               close_body(CloseCode.USER_LIMIT, reason), ref=conn_id))

    assert await b.backend.routing.route("alice", close("an-earlier-conn", "not this one"))
    assert await b.backend.routing.route("alice", close(located.conn_id, "this one"))
    assert await socket.wait_closed() == (CloseCode.USER_LIMIT, "this one")


async def test_a_seat_an_older_snapshot_names_does_not_close_the_users_live_tab(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis restarts from a snapshot taken while the user's first tab (since closed) was
    on a: the seat it restores names a connection that is gone. b's resync after the
    incarnation change re-registers the tab the store had admitted in its place: the stale
    seat must not count against it, or the user's only live tab closes with USER_LIMIT."""
    options: dict[str, Any] = {"redis_url": private_redis.url, "namespace": namespace,
                               "max_connections_per_user": 1, "op_timeout": 0.5, **QUIET}
    # a's liveness entry outlives the test: no reap drops the stale seat before b resyncs
    a = make_manager(WebSocketConfig(node_id="a", node_ttl=60.0, **options))
    b = make_manager(WebSocketConfig(node_id="b", node_ttl=1.5, **options))
    store = Redis.from_url(private_redis.url)
    try:
        await a.start()
        await b.start()
        first = await tab(a, "ann/1")
        await store.save()  # what the restart loads: ann/1 seated on a
        await leave(first)
        live = await tab(b, "ann/2")
        await a.graceful_shutdown(timeout=2.0)  # (only b settles: the stale seat stays)
        ended = resyncs(b, monkeypatch)

        await asyncio.to_thread(private_redis.restart)
        async with asyncio.timeout(RECOVERY):
            await ended.get()

        assert b.is_connected("ann/2")
        assert live.ws.closed is None
        assert "ann/2" in await seats(b)
        await leave(live)
    finally:
        await store.aclose()
