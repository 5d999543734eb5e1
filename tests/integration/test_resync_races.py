"""A node's own presence against what happens around a resync, on the embedded backend (the
Redis twins are in tests/faults/test_regressions.py): a client that leaves while its node
resyncs, and a node restarted under its node id before anyone reaped it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import MemoryBackend, MemoryHub, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Resynced
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

FAST: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0,
                        "node_ttl": 1.5, "op_timeout": 0.5}  # maintenance every 0.5 s
Node = Callable[[str], WebSocketConnectionManager]


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
def node(hub: MemoryHub, make_manager: ManagerFactory) -> Node:
    def build(node_id: str) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(node_id=node_id, **FAST),
                            backend=MemoryBackend(hub))
    return build


async def until(check: Callable[[], Awaitable[bool]], limit: float = 6.0) -> bool:
    """Poll `check` until it holds or `limit` seconds pass; return whether it held."""
    try:
        async with asyncio.timeout(limit):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False
    return True


async def test_a_client_that_leaves_during_a_resync_is_not_written_back(
    node: Node, hub: MemoryHub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = node("a"), node("b")
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("alice"))
    liveness = a.backend.liveness
    original = liveness.resync
    listed, go_on, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_resync(local: Any, **kwargs: Any) -> Resynced:
        if not any(presence.client_id == "alice" for presence in local):
            return await original(local, **kwargs)
        listed.set()
        await go_on.wait()
        try:
            return await original(local, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(liveness, "resync", held_resync)
    assert hub.cut_subscription("a")  # the listener resubscribes and wants a resync
    async with asyncio.timeout(6.0):
        await listed.wait()
    await a.disconnect("alice")
    assert await b.locate_client("alice") is None
    go_on.set()
    async with asyncio.timeout(6.0):
        await finished.wait()

    async def gone() -> bool:
        return await b.locate_client("alice") is None and (
            await b.get_cluster_connection_count() == 0)

    assert await until(gone), f"presence names {await b.locate_client('alice')} for alice"


async def test_a_node_restarted_under_its_id_ends_its_predecessors_clients(
    node: Node,
) -> None:
    first, b = node("a"), node("b")
    await first.start()
    await b.start()
    await first.connect("alice", FakeSocket("alice"))
    await b.join_group("alice", "room")
    await first.backend.aclose()  # the first process of node a is gone, unreaped
    second = node("a")
    await second.start()
    assert await b.locate_client("alice") is None

    async def no_membership() -> bool:
        return await b.get_group_members("room") == []

    assert await until(no_membership), f"still a member: {await b.get_group_members('room')}"
