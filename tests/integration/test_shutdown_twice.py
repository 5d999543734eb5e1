"""A second graceful_shutdown() while one runs (the lifespan's signal drain and the app's own
lifespan exit, say) waits for it and returns its report. Before, it returned at once with an
empty report while the node was still draining and its loops still ran."""

from __future__ import annotations

import asyncio
from typing import Any

from stabilizer import ShutdownReport, WebSocketConfig
from stabilizer.node.context import Phase
from tests.conftest import ManagerFactory
from tests.support.fakes import SlowToClose

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
BOUND = 5.0


async def test_a_second_shutdown_waits_for_the_first_and_returns_its_report(
        make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(close_timeout=BOUND, **QUIET))
    sock = SlowToClose("held")
    await manager.connect("alice", sock)
    first = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND, restart=True))
    async with asyncio.timeout(BOUND):
        await sock.closing.wait()
    phase_when_returned: list[Phase] = []
    second = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))

    def returned(_: Any) -> None:
        phase_when_returned.append(manager.phase)

    second.add_done_callback(returned)
    await asyncio.sleep(0)  # (the second call has run up to its wait)
    sock.release.set()
    async with asyncio.timeout(BOUND):
        reports: list[ShutdownReport] = await asyncio.gather(first, second)
    assert phase_when_returned == [Phase.STOPPED]
    assert reports[1] == reports[0]
    assert (reports[0].closed_count, reports[0].close_code) == (1, 1012)
