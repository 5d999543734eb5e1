"""After an outage: "if another node took a client meanwhile, the stale local socket is
closed as replaced" (README, Redis outages), and one client keeps one socket.

One node is cut off from Redis by a proxy while Redis and the other node carry on, so the
other node can really take the client meanwhile: its register script sends the kick to a
node that is not listening.

Cut off past node_ttl, the node is reaped, and its settle gives the store back the
memberships it lost. It gave them back for every local connection, also for a client that
had connected again elsewhere meanwhile (a fresh session, in no group): the stale socket's
close then handed them over, and the fresh session found itself in the old one's groups,
listed in their presence with the old metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
#: A node retries Redis within node_ttl / 3 (here 0.5 s) once it is reachable again.
FAST = {"node_ttl": 1.5, "op_timeout": 0.5}
#: Bounds, not waits: recovery takes about a second; a loaded machine gets the rest.
RECOVERY = 20.0

Node = Callable[..., WebSocketConnectionManager]

#: The key layouts whose restore differs: the namespace's slot (one script reads presence
#: and restores), presence over two buckets, and spread keys (steps over several slots).
LAYOUTS: dict[str, dict[str, Any]] = {"namespace": {}, "buckets": {"presence_buckets": 2},
                                      "spread": {"redis_spread_keys": True}}


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(private_redis.port) as forwarder:
        yield forwarder


@pytest.fixture
def node(namespace: str, make_manager: ManagerFactory) -> Node:
    def build(node_id: str, redis_url: str, **options: Any) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                            node_id=node_id, **QUIET, **FAST, **options))
    return build


def reap_watched(reaper: WebSocketConnectionManager,
                 monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once `reaper` has reaped a node."""
    reaped = asyncio.Event()
    liveness: Any = reaper.backend.liveness
    reap_node = liveness._reap_node

    async def reap(node_id: str, session_ttl: float) -> None:
        await reap_node(node_id, session_ttl)
        reaped.set()

    monkeypatch.setattr(liveness, "_reap_node", reap)
    return reaped


async def test_a_client_taken_over_while_its_node_was_cut_off_is_closed_there_as_replaced(
    private_redis: RedisServer, proxy: TcpProxy, node: Node
) -> None:
    a = node("a", proxy.url)  # reaches Redis through the proxy
    b = node("b", private_redis.url)
    await a.start()
    await b.start()
    stale = FakeSocket("stale")
    await a.connect("alice", stale)
    assert await b.locate_client("alice") == "a"

    await proxy.cut()
    fresh = FakeSocket("fresh")
    await b.connect("alice", fresh)  # the kick goes to node a's channel: nobody listens
    assert await b.locate_client("alice") == "b"
    assert stale.closed is None  # node a cannot know yet

    await proxy.restore()
    code, _ = await stale.wait_closed(timeout=RECOVERY)

    assert code == CloseCode.REPLACED
    assert fresh.closed is None
    assert not a.is_connected("alice")
    assert await a.locate_client("alice") == "b"
    assert await a.send_to_client("alice", "found you")  # routed to b, the live socket
    assert await fresh.next() == "found you"


async def test_a_client_admitted_while_its_node_was_cut_off_keeps_the_newer_socket(
    private_redis: RedisServer, proxy: TcpProxy, node: Node
) -> None:
    a = node("a", private_redis.url)
    b = node("b", proxy.url)  # this one is cut off
    await a.start()
    await b.start()
    stale = FakeSocket("stale")
    await a.connect("alice", stale)

    await proxy.cut()
    fresh = FakeSocket("fresh")
    await b.connect("alice", fresh)  # admitted locally: "new clients are admitted locally"
    await proxy.restore()

    closes = [asyncio.ensure_future(sock.wait_closed(timeout=RECOVERY))
              for sock in (stale, fresh)]
    done, pending = await asyncio.wait(closes, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    assert closes[0] in done, "the newer socket was closed; the stale one is still open"
    assert closes[0].result()[0] == CloseCode.REPLACED
    assert fresh.closed is None
    assert await a.locate_client("alice") == "b"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
async def test_a_client_back_elsewhere_gets_none_of_the_groups_its_reaped_node_gives_back(
    private_redis: RedisServer, proxy: TcpProxy, node: Node, layout: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = node("x", proxy.url, **LAYOUTS[layout])  # cut off past node_ttl: y reaps it
    y = node("y", private_redis.url, **LAYOUTS[layout])
    await x.start()
    await y.start()
    stale = FakeSocket("stale")
    await x.connect("k", stale)
    await x.join_group("k", "secret", presence={"role": "old"})
    reaped = reap_watched(y, monkeypatch)

    await proxy.cut()
    async with asyncio.timeout(RECOVERY):
        await reaped.wait()
    fresh = FakeSocket("fresh")
    await y.connect("k", fresh)  # a fresh session; its kick goes nowhere
    await proxy.restore()
    code, _ = await stale.wait_closed(timeout=RECOVERY)  # after x's settle gave groups back

    assert code == CloseCode.REPLACED
    assert fresh.closed is None
    assert await y.get_group_members("secret") == []
    assert await y.get_presence("secret") == {}
    assert await y.locate_client("k") == "y"
