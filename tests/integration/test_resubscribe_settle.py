"""A membership change lost with a node's subscription is carried out once the subscription
is back, not at the node's next upkeep.

A join written through another node while the client's node had lost its pub/sub connection
publishes its MEMBERSHIP envelope to nobody. The node-wide settle that repairs that used to
wait for the next maintenance step (every node_ttl / 3: seconds by default), while the node
looked healthy again and its client missed every message of the group meanwhile. The fault
checker judged two clusters in that window (seeds 260364782 and 1302636885, spread layout):
the group's final message went out before the settle and never reached its member.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
# maintenance every 40 s: no upkeep falls inside the test after the nodes' first ones
SLOW_UPKEEP: dict[str, Any] = {"node_ttl": 120.0, "op_timeout": 0.5}
SETTLED = 10.0  # a bound on the settle after resubscribing (it takes a few round trips)


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(private_redis.port) as forwarder:
        yield forwarder


async def receives(client: FakeSocket, sender: WebSocketConnectionManager, group: str) -> bool:
    """Whether a message sent to `group` now reaches `client` (a bounded poll: no event says
    a node's local memberships settled)."""
    try:
        async with asyncio.timeout(SETTLED):
            while True:
                await sender.send_to_group(group, "hello room")
                try:
                    await client.expect("hello room", timeout=0.3)
                    return True
                except TimeoutError:
                    pass
    except TimeoutError:
        return False


@pytest.mark.parametrize("spread", [False, True], ids=["namespace", "spread"])
async def test_a_join_lost_with_the_subscription_is_settled_once_it_is_back(
    spread: bool, make_manager: ManagerFactory, private_redis: RedisServer,
    proxy: FaultProxy, namespace: str,
) -> None:
    def node(node_id: str, url: str) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=url, namespace=namespace, node_id=node_id,
                                            redis_spread_keys=spread, **QUIET, **SLOW_UPKEEP))

    a, b = node("a", proxy.url), node("b", private_redis.url)
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    subscribed = a.backend.routing.subscribed
    await proxy.drop_subscriptions(hold=True)  # a's resubscribe waits for restore()
    async with asyncio.timeout(SETTLED):
        while subscribed.is_set():  # (cleared by a's listener once it sees the loss)
            await asyncio.sleep(0.01)
    await b.join_group("alice", "room")  # its envelope goes to a's channel: nobody listens
    assert "alice" in await b.get_group_members("room")
    proxy.restore()
    async with asyncio.timeout(SETTLED):
        await subscribed.wait()

    assert await receives(alice, b, "room"), (
        "Redis lists alice in room, but her node, subscribed again, did not settle the join "
        "lost with its subscription: she misses the room until its next upkeep")
