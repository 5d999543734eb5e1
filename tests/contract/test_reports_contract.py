"""Contract of node reports: each node keeps its latest one, and it goes with the node
(unregistered, or reaped by a survivor)."""

from __future__ import annotations

import asyncio
import time

from stabilizer.backends.base import NodeReport
from tests.contract.test_backend_contract import NodeFactory, open_node

__all__ = ["open_node"]  # the fixture, re-exported for pytest


def report(node_id: str, connections: int) -> NodeReport:
    return NodeReport(node_id, "running", time.time(), connections=connections,
                      messages_in=5, backend_latency_ms=0.25, groups={"room": connections})


async def test_each_node_keeps_its_latest_report(open_node: NodeFactory) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    assert await a.liveness.reports() == []
    await a.liveness.report(report("node-a", 1))
    of_b = report("node-b", 2)
    await b.liveness.report(of_b)
    latest = report("node-a", 3)
    await a.liveness.report(latest)
    assert await b.liveness.reports() == [latest, of_b]


async def test_a_report_goes_with_its_node(open_node: NodeFactory) -> None:
    a, b, c = (await open_node("node-a"), await open_node("node-b"),
               await open_node("node-c"))
    for node_id, backend in (("node-a", a), ("node-b", b), ("node-c", c)):
        await backend.liveness.keepalive(60.0)
        await backend.liveness.report(report(node_id, 0))
    await c.liveness.unregister_node()
    assert [r.node_id for r in await a.liveness.reports()] == ["node-a", "node-b"]
    await b.liveness.keepalive(0.05)  # b stops refreshing: a reaps it once it expired
    reaped: tuple[str, ...] = ()
    async with asyncio.timeout(5):
        while "node-b" not in reaped:
            await asyncio.sleep(0.06)
            reaped = (await a.liveness.keepalive(60.0)).reaped
    assert [r.node_id for r in await a.liveness.reports()] == ["node-a"]
