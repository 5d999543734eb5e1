"""This node's figures on the dashboard (/dashboard/data) and in the report its keepalive
writes: gathered a slice of the pool per loop pass, the groups' from the membership index.

Before, each poll built this node's report in one synchronous pass over every connection
and each of its groups (151 ms at 80,000 connections in 8 groups each, with a page that
may poll every 250 ms); the keepalive's report took the same pass."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.dashboard import snapshot
from tests.integration.test_dashboard import QUIET, row
from tests.support.fakes import FakeSocket

T = TypeVar("T")
SLICE = 5  # max_concurrent_broadcast: connections per slice
CONNECTIONS = 60


async def with_turns(awaitable: Awaitable[T]) -> tuple[T, int]:
    """Await `awaitable`; return its result and how many turns another task had meanwhile."""
    turns = 0
    running = True

    async def other_task() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)  # (its first turn, before the awaitable starts)
    turns = 0
    try:
        result = await awaitable
    finally:
        running = False
        await task
    return result, turns


async def test_a_poll_lets_the_loop_run_between_slices_and_counts_right() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET,  # type: ignore[arg-type]
                                                         max_concurrent_broadcast=SLICE))
    slow = FakeSocket("slow")
    slow.gate.clear()  # its first frame is stuck in send(); the rest wait in its outbox
    await manager.connect("slow", slow)
    for n in range(CONNECTIONS - 1):
        await manager.connect(f"c{n}", FakeSocket(f"c{n}"))
        await manager.join_group(f"c{n}", f"room-{n % 3}")
        await manager.join_group(f"c{n}", "all-of-them")
    for n in range(4):
        await manager.send_to_client("slow", f"frame-{n}")
    try:
        data, turns = await with_turns(snapshot(manager))
        assert turns >= CONNECTIONS // SLICE  # not one pass over the pool
        here = row(data, manager.node_id)
        assert (here["connections"], here["outbox_frames"], here["outbox_max_frames"]) == (
            CONNECTIONS, 3, 3)
        assert data["groups"] == [{"group": "all-of-them", "members": 59},
                                  {"group": "room-0", "members": 20},
                                  {"group": "room-1", "members": 20},
                                  {"group": "room-2", "members": 19}]
        # the report the keepalive writes is gathered the same way
        report, turns = await with_turns(manager._node.reporter.next())
        assert turns >= CONNECTIONS // SLICE
        assert (report.connections, report.outbox_frames, report.outbox_max_frames) == (
            CONNECTIONS, 3, 3)
        assert report.groups == {"all-of-them": 59, "room-0": 20, "room-1": 20, "room-2": 19}
    finally:
        slow.gate.set()
        await manager.graceful_shutdown(timeout=2.0)
