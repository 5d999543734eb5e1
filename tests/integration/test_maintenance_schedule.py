"""The maintenance loop keeps two schedules: the backend upkeep (keepalive, the node's
report, the session sweep) every ``node_ttl / 3``, the memory check every
``memory_check_interval``; neither runs at the other's rate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import MemoryBackend, MemoryHub, WebSocketConfig
from stabilizer.backends.base import NodeRegistry, NodeReport
from tests.conftest import ManagerFactory

MEMORY_CHECKS = 20


async def test_a_short_memory_check_interval_adds_no_keepalives(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With memory_check_interval far below node_ttl / 3 every wake-up for a memory check
    ran the whole upkeep too: a reviewer counted 96 report HSETs in 5 s with node_ttl 10
    (one every 3.3 s is due). Counted per memory check, no time measured: between the first
    check and the twentieth none of the upkeep is due (the next is 20 minutes away)."""
    manager = make_manager(
        WebSocketConfig(node_ttl=3600.0, memory_check_interval=0.01,
                        heartbeat_interval=3600.0, heartbeat_timeout=3600.0),
        backend=MemoryBackend(MemoryHub()))
    liveness: NodeRegistry = manager.backend.liveness
    keepalives = reports = 0
    keepalive, report = liveness.keepalive, liveness.report

    async def counted_keepalive(*args: Any, **kwargs: Any) -> Any:
        nonlocal keepalives
        keepalives += 1
        return await keepalive(*args, **kwargs)

    async def counted_report(node_report: NodeReport) -> None:
        nonlocal reports
        reports += 1
        await report(node_report)

    monkeypatch.setattr(liveness, "keepalive", counted_keepalive)
    monkeypatch.setattr(liveness, "report", counted_report)
    memory = manager._node.memory  # the guard the maintenance loop calls (no public seam)
    check = memory.check
    seen: list[tuple[int, int]] = []  # (keepalives, reports) at each memory check
    checked = asyncio.Event()

    def counted_check() -> None:
        seen.append((keepalives, reports))
        if len(seen) == MEMORY_CHECKS:
            checked.set()
        check()

    monkeypatch.setattr(memory, "check", counted_check)
    await manager.start()
    async with asyncio.timeout(10.0):  # a bound: twenty checks 0.01 s apart
        await checked.wait()
    first, last = seen[0], seen[MEMORY_CHECKS - 1]
    assert first[0] >= 1  # the upkeep runs at start
    assert last == first, seen
