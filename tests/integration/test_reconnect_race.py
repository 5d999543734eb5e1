"""A client that drops and reconnects (no history) while its old socket is still being
released keeps what its new socket joined: the old socket's release must not end the
memberships and presence the new one wrote (found by bench.presence's reconnect storm:
half of the clients were missing from the channel after it)."""

from __future__ import annotations

import asyncio

from stabilizer.config import CloseCode
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest


class SlowToClose(FakeSocket):
    """A socket whose close() waits until `release` is set, as a lost peer's may."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closing = asyncio.Event()
        self.release = asyncio.Event()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closing.set()
        await self.release.wait()
        await super().close(code, reason)


async def test_a_reconnect_during_the_old_release_keeps_its_memberships(
        cluster: Cluster) -> None:
    node = cluster("a")
    await started(node)
    old = SlowToClose("old")
    await node.connect("x", old)
    await node.join_group("x", "room", presence={"gen": 1})
    dropping = asyncio.create_task(node.disconnect("x", code=CloseCode.GOING_AWAY))
    async with asyncio.timeout(5.0):
        await old.closing.wait()  # the old socket is out of the pool, its release under way
    await node.connect("x", FakeSocket("new"))  # the client is back, on a fresh session
    await node.join_group("x", "room", presence={"gen": 2})
    old.release.set()
    async with asyncio.timeout(5.0):
        await dropping
    assert await node.get_group_members("room") == ["x"]
    assert await node.get_presence("room") == {"x": [{"client_id": "x", "meta": {"gen": 2}}]}
    conn = node.get_connection("x")
    assert conn is not None
    assert "room" in conn.groups
