"""A sweeper that dies mid-sweep leaves its clients to the next one.

With several presence buckets, presence lives in other hash slots than the away list, so a
sweep takes a due client, reads its presence and then ends its session and groups, in
separate steps. It took the client off the list first: a node that died (or hung) between
that and the end left the client's groups for good, with nothing left to sweep. A sweep now
holds the due clients on the list for a lease instead, as the spread layout's does, and the
end takes them off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConnectionManager
from tests.support.fakes import FakeSocket
from tests.support.fast_nodes import LIMIT, Node, dies_after_removal, node, sweep_ends

pytestmark = [pytest.mark.redis, pytest.mark.slow]

BUCKETS: dict[str, Any] = {"presence_buckets": 2}

__all__ = ["node"]  # the fixture, re-exported for pytest


def stick(manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch,
          taken: asyncio.Event) -> None:
    """From now on the node's presence lookups never return: its sweep hangs after taking
    its due clients, as a node that dies there would leave them; `taken` is set then."""

    async def locate(client_id: str) -> None:
        taken.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(manager.backend.presence, "locate", locate)


async def test_a_sweeper_that_hangs_after_taking_a_client_leaves_it_to_the_next(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    a = node("a", **BUCKETS)
    await a.start()
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")
    dies_after_removal(a, monkeypatch)  # x is left to the sweep
    taken = asyncio.Event()
    stick(a, monkeypatch, taken)  # a's own sweep takes x, then hangs
    await a.disconnect("x", code=CloseCode.NORMAL)
    async with asyncio.timeout(LIMIT):
        await taken.wait()
    b = node("b", **BUCKETS)
    swept = sweep_ends([b], "x", monkeypatch)
    await b.start()
    async with asyncio.timeout(LIMIT):  # (fails on the old code: nothing left to sweep)
        await swept.wait()
    assert await b.get_group_members("room") == []
