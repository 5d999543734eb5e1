"""The cluster gauges /stats and /metrics share: a request that comes while another fetches
them must not read them as absent (they are absent only after a failed fetch)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from stabilizer.errors import BackendUnavailable
from stabilizer.node.context import Phase
from stabilizer.surveys import ClusterCache, ClusterView


class Store:
    """A manager's cluster-wide reads, each held until `release` is set."""

    def __init__(self) -> None:
        self.backend = SimpleNamespace(is_shared=True)
        self.phase = Phase.RUNNING
        self.config = SimpleNamespace(op_timeout=30.0)
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 1
        self.fails = False

    async def get_cluster_connection_count(self) -> int:
        self.asked.set()
        await self.release.wait()
        if self.fails:
            raise BackendUnavailable("down")
        return self.count

    async def get_nodes(self) -> list[str]:
        return ["a", "b"]


async def warmed() -> tuple[list[float], ClusterCache, Store]:
    """A cache (5 s) that fetched once at time 0, its clock, and its store."""
    now = [0.0]
    cache = ClusterCache(5.0, lambda: now[0])
    store = Store()
    store.release.set()
    await cache.refresh(store)  # type: ignore[arg-type]
    assert cache.value == ClusterView(1, 2)
    return now, cache, store


async def test_a_request_during_a_fetch_reads_the_gauges_it_had_not_none() -> None:
    now, cache, store = await warmed()
    now[0] = 10.0  # stale: the next request fetches again
    store.release.clear()
    store.asked.clear()
    store.count = 3
    first = asyncio.create_task(cache.refresh(store))  # type: ignore[arg-type]
    await store.asked.wait()
    assert cache.value == ClusterView(1, 2)  # (it read None here)
    second = asyncio.create_task(cache.refresh(store))  # type: ignore[arg-type]
    store.release.set()
    await asyncio.gather(first, second)
    assert cache.value == ClusterView(3, 2)


async def test_a_failed_fetch_leaves_the_gauges_out_until_one_succeeds() -> None:
    now, cache, store = await warmed()
    now[0] = 10.0
    store.fails = True
    await cache.refresh(store)  # type: ignore[arg-type]
    assert cache.value is None
    now[0] = 12.0  # within max_age of the failure: not asked again
    store.fails = False
    await cache.refresh(store)  # type: ignore[arg-type]
    assert cache.value is None
    now[0] = 16.0
    await cache.refresh(store)  # type: ignore[arg-type]
    assert cache.value == ClusterView(1, 2)
