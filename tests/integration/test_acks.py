"""Acknowledged sends to users with history (docs/protocol.md 6.7), on two nodes served by
uvicorn in this event loop (memory hub and real Redis), with v2 clients written by hand so
that each acknowledgement is sent exactly when the test says.

send_to_user(ack=True) waits for the connections it reached. Before, it counted ack frames
by the send's token, and a copy of the message a connection got again from history (a tab
that was away when it was sent, or a tab that resumed after acknowledging it already) was
counted too: the send returned before every connection it reached had acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from stabilizer import Identity, MemoryBackend, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.memory.hub import MemoryHub
from stabilizer.errors import ShutdownError
from stabilizer.node.context import Phase
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0,
           "heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
ANN = Identity("ann")  # every client of the served app is a tab of this user
#: (manager, ws:// URL) of each node
Nodes = list[tuple[WebSocketConnectionManager, str]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def two_nodes(request: pytest.FixtureRequest, namespace: str,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Nodes]:
    """Two nodes sharing one store (a memory hub, or the session's redis-server), each
    served on a loopback port."""
    hub = MemoryHub()
    shared: dict[str, Any] = {}
    if request.param == "redis":
        shared = {"redis_url": request.getfixturevalue("redis_url")}
    managers = [WebSocketConnectionManager(
        WebSocketConfig(node_id=f"node-{i}", namespace=namespace, **HISTORY, **shared),
        backend=None if shared else MemoryBackend(hub)) for i in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for manager in managers:
            server = await stack.enter_async_context(
                served(session_app(manager, ANN), "websockets-sansio", monkeypatch))
            nodes.append((manager, f"ws://127.0.0.1:{server.port}/ws"))
        yield nodes


class Tab:
    """A v2 client of ann's, on a socket this test drives frame by frame."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.token: str = welcome["token"]
        self.client_id: str = welcome["client_id"]
        self.resumed: bool = welcome["resumed"]

    @classmethod
    async def open(cls, url: str, device: str, **resume: Any) -> Tab:
        """Connect (resuming with `reconnect_token` and `positions`, if given)."""
        ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "device": device, **resume}))
        welcome = await next_frame(ws)
        assert welcome["type"] == "session"
        return cls(ws, welcome)

    async def message(self) -> dict[str, Any]:
        """The next application message frame (a resume frame before it skipped)."""
        while True:
            frame = await next_frame(self.ws)
            if frame["type"] == "message":
                return frame

    async def ack(self, frame: dict[str, Any]) -> None:
        """Acknowledge `frame`; return once the server read the acknowledgement (it
        answers a later ping in order)."""
        await self.ws.send(json.dumps({"type": "ack", "id": frame["ack"]}))
        await self.ws.send(json.dumps({"type": "ping"}))
        while (await next_frame(self.ws))["type"] != "pong":
            pass  # (the resume frame after a replay)

    async def leave(self) -> None:
        await self.ws.close(1001)  # going away: the session stays resumable


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    """The next frame that is not a heartbeat ping."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame.get("type") != "ping":
            return frame  # type: ignore[no-any-return]


def tabs_of_ann(manager: WebSocketConnectionManager, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await manager.get_user_connections("ann")) == count
    return check


async def test_a_tab_away_at_send_time_acknowledging_its_replayed_copy_does_not_count(
    two_nodes: Nodes,
) -> None:
    (origin, origin_url), (_, other_url) = two_nodes
    away = await Tab.open(origin_url, "away")
    await away.leave()
    await until(tabs_of_ann(origin, 0))
    reached = await Tab.open(other_url, "reached")
    await until(tabs_of_ann(origin, 1))

    asking = asyncio.create_task(origin.send_to_user("ann", "hi", ack=True, timeout=10))
    sent = await reached.message()
    assert sent["data"] == "hi"
    # the tab that was away comes back on the asking node and is replayed the message
    back = await Tab.open(origin_url, "away", reconnect_token=away.token, positions={})
    replayed = await back.message()
    assert (replayed["data"], replayed["ack"]) == ("hi", sent["ack"])
    await back.ack(replayed)  # (read by the asking node itself: nothing left in flight)
    assert not asking.done(), "returned before the tab it reached acknowledged"

    await reached.ack(sent)
    async with asyncio.timeout(5):
        assert await asking == 1  # the one connection it reached


async def test_a_tab_acknowledging_again_after_a_resume_counts_once(two_nodes: Nodes) -> None:
    (origin, origin_url), (_, other_url) = two_nodes
    first = await Tab.open(origin_url, "first")
    second = await Tab.open(other_url, "second")
    await until(tabs_of_ann(origin, 2))

    asking = asyncio.create_task(origin.send_to_user("ann", "hi", ack=True, timeout=10))
    sent = await first.message()
    await first.ack(sent)
    await first.leave()  # before its position was saved: it is replayed the message again
    await until(tabs_of_ann(origin, 1))
    back = await Tab.open(origin_url, "first", reconnect_token=first.token,
                          positions={sent["stream"]: [sent["offset"] - 1, sent["epoch"]]})
    replayed = await back.message()
    assert (replayed["offset"], replayed["ack"]) == (sent["offset"], sent["ack"])
    await back.ack(replayed)  # a duplicate the client drops and acknowledges (section 6.7)
    assert not asking.done(), "counted the first tab twice"

    await second.ack(await second.message())
    async with asyncio.timeout(5):
        assert await asking == 2


async def test_an_ack_arriving_while_the_asking_node_drains_is_counted(two_nodes: Nodes) -> None:
    """Found by review: a node asked to stop ended its listener at once, with a send still
    waiting for a client on another node; that client's acknowledgement went unheard, and
    the send failed only at its timeout (the process exiting with it). The drain now waits
    for the acknowledgements awaited (until its deadline), so this one counts."""
    (origin, _), (_, other_url) = two_nodes
    tab = await Tab.open(other_url, "tab")
    await until(tabs_of_ann(origin, 1))
    asking = asyncio.create_task(origin.send_to_client(tab.client_id, "hi", ack=True,
                                                       timeout=3600))
    sent = await tab.message()
    stopping = asyncio.create_task(origin.graceful_shutdown(timeout=3600))

    async def draining() -> bool:
        return origin.phase is Phase.DRAINING
    await until(draining)
    await tab.ack(sent)
    async with asyncio.timeout(10):  # a bound, not the 3600 s of either
        assert await asking is True
        await stopping
    assert origin.phase is Phase.STOPPED


async def test_an_ack_wait_its_node_stops_under_fails_at_once(two_nodes: Nodes) -> None:
    """A send still waiting when its node stops listening (the drain's deadline passed)
    fails at once with ShutdownError, not at its timeout; so does one begun after that."""
    (origin, _), (_, other_url) = two_nodes
    tab = await Tab.open(other_url, "tab")
    await until(tabs_of_ann(origin, 1))
    asking = asyncio.create_task(origin.send_to_client(tab.client_id, "hi", ack=True,
                                                       timeout=3600))
    users = asyncio.create_task(origin.send_to_user("ann", "all", ack=True, timeout=3600))
    assert (await tab.message())["data"] == "hi"
    assert (await tab.message())["data"] == "all"
    await origin.graceful_shutdown(timeout=0)  # no drain: nothing more is heard
    async with asyncio.timeout(10):  # a bound, not the 3600 s
        for waiting in (asking, users):
            with pytest.raises(ShutdownError, match="outcome unknown"):
                await waiting
        with pytest.raises(ShutdownError, match="nothing was sent"):
            await origin.send_to_client(tab.client_id, "late", ack=True, timeout=3600)
