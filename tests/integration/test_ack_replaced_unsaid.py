"""An acknowledged send whose client's socket is replaced, where the old socket's node
learns of the replacement from something other than the KICK that says how it began
(docs/protocol.md 6.7): its resync after it was cut off from Redis, or after its
subscription lost the KICK. Two nodes served by uvicorn in this event loop, v2 clients
written by hand.

Found by review: the node of the old socket failed the send at once only when the KICK of
a fresh session reached it (its payload FRESH). Told by a resync, which cannot say how the
newer connection began, it dropped the awaited token without a word, and the send waited
out its whole timeout. The node now asks the store whether the session the socket held is
still there, so that how it was told no longer matters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stabilizer import (
    AckTimeoutError,
    CloseCode,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.pure.wire import Kind, decode
from tests.integration.test_ack_replaced import BOUND, awaiting, replaced
from tests.integration.test_acks import ANN, HISTORY, Nodes, Tab
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

#: A node retries Redis within node_ttl / 3 (0.5 s) once it is reachable again.
FAST = {"node_ttl": 1.5, "op_timeout": 0.5}
RECOVERY = 20.0  # a bound for the resync after the cut, never waited out
HOW = pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "resumed"])


@contextlib.asynccontextmanager
async def nodes_of(configs: list[WebSocketConfig], monkeypatch: pytest.MonkeyPatch,
                   hub: MemoryHub | None = None) -> AsyncIterator[Nodes]:
    """A node per config, each served on a loopback port (sharing `hub`, if given)."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for config in configs:
            manager = WebSocketConnectionManager(
                config, backend=None if hub is None else MemoryBackend(hub))
            server = await stack.enter_async_context(
                served(session_app(manager, ANN), "websockets-sansio", monkeypatch))
            nodes.append((manager, f"ws://127.0.0.1:{server.port}/ws"))
        yield nodes


async def replacement(url: str, tab: Tab, sent: dict[str, Any], fresh: bool) -> Tab:
    """The same client again on `url`: afresh (no reconnect token), or resuming from just
    before `sent`."""
    if fresh:
        again = await Tab.open(url, "tab")
    else:
        again = await Tab.open(url, "tab", reconnect_token=tab.token,
                               positions={sent["stream"]: [sent["offset"] - 1, sent["epoch"]]})
    assert (again.client_id, again.resumed) == (tab.client_id, not fresh)
    return again


async def settled(asking: asyncio.Task[bool], again: Tab, sent: dict[str, Any],
                  fresh: bool) -> None:
    """A fresh replacement fails the send at once; a resumed one is replayed the message,
    and its acknowledgement settles the send."""
    if fresh:
        async with asyncio.timeout(BOUND):
            with pytest.raises(AckTimeoutError, match="can no longer acknowledge"):
                await asking
        return
    replayed = await again.message()
    assert (replayed["data"], replayed["ack"]) == ("hi", sent["ack"])
    assert not asking.done()  # the replacement did not end the wait
    await again.ack(replayed)
    async with asyncio.timeout(BOUND):
        assert await asking is True


@pytest.mark.redis
@HOW
async def test_a_replacement_made_while_the_old_node_was_cut_off_is_found_by_its_resync(
    private_redis: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch,
    fresh: bool,
) -> None:
    async with TcpProxy(private_redis.port) as proxy:
        configs = [WebSocketConfig(node_id=node_id, redis_url=url, namespace=namespace,
                                   **HISTORY, **FAST)
                   for node_id, url in (("x", proxy.url), ("y", private_redis.url))]
        async with (nodes_of(configs, monkeypatch) as [(x, x_url), (_, y_url)],
                    awaiting(x, x_url) as (tab, sent, asking)):
            await proxy.cut()  # the KICK of the replacement goes to nobody
            again = await replacement(y_url, tab, sent, fresh)
            await proxy.restore()
            async with asyncio.timeout(RECOVERY):  # x's resync: y holds the client
                await tab.ws.wait_closed()
            assert tab.ws.close_code == CloseCode.REPLACED
            await settled(asking, again, sent, fresh)
            await again.ws.close()


@HOW
async def test_a_replacement_whose_kick_was_lost_with_the_subscription_is_found_by_a_resync(
    namespace: str, monkeypatch: pytest.MonkeyPatch, fresh: bool,
) -> None:
    hub = MemoryHub()
    configs = [WebSocketConfig(node_id=f"node-{i}", namespace=namespace, **HISTORY)
               for i in range(2)]
    deliver = hub.deliver
    lost: list[bytes] = []

    def losing_kicks(node_id: str, envelope: bytes) -> bool:
        """A KICK to node-0 is lost with its subscription (as when its inbox overflows):
        the node resubscribes and resyncs."""
        if node_id == "node-0" and decode(envelope).kind is Kind.KICK:
            lost.append(envelope)
            assert hub.cut_subscription(node_id)
            return True
        return deliver(node_id, envelope)

    monkeypatch.setattr(hub, "deliver", losing_kicks)
    async with (nodes_of(configs, monkeypatch, hub) as [(holder, url), (_, other_url)],
                awaiting(holder, url) as (tab, sent, asking)):
        again = await replacement(other_url, tab, sent, fresh)
        assert await replaced(tab) == CloseCode.REPLACED
        assert lost  # (closed by the resync, not by the KICK)
        await settled(asking, again, sent, fresh)
        await again.ws.close()
