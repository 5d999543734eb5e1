"""Reaping a node that is alive (the fault checker's seed 1817568199, history on).

A node whose keepalives stop reaching Redis for longer than node_ttl (Redis paused, the
link stalled) is taken for dead: a survivor removes its presence entries, then its
liveness entry. When the node refreshes its entry between those two steps (and may have
registered its clients again just before the entries went), the survivor's second step
used to keep the entry as a live node's: the node never learned that its clients' presence
was gone, a client that connected elsewhere found no earlier socket to kick, and both
sockets stayed open. The second step now always removes it, so the node's next keepalive
finds itself gone and registers its connections again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer.backends.base import Presence
from stabilizer.backends.redis import RedisBackend
from stabilizer.node.tasks import TaskOwner

pytestmark = pytest.mark.redis


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
            # there, so it does not know it was reaped
            refreshed.append((await paused.liveness.keepalive(30)).rejoined)
            return removed

        monkeypatch.setattr(reaper.liveness, "_reap_clients", then_it_refreshes)
        assert (await reaper.liveness.keepalive(30)).reaped == ("node-x",)
        assert refreshed == [False]
        assert await reaper.presence.locate("c0") is None

        assert (await paused.liveness.keepalive(30)).rejoined is True
        assert await reaper.liveness.nodes() == ["node-a", "node-x"]
    finally:
        await store.aclose()
        assert await tasks.stop(2.0) == []
        await reaper.aclose()
        await paused.aclose()
