"""The dashboard's groups table (/dashboard/data) across nodes: each group shown is counted
on every node, from the shared store.

Before, the table summed what each node reported of its 50 largest groups, under
"connected members, summed over nodes": a group large on one node and small on another
showed the first node's members only."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stabilizer.dashboard import snapshot
from stabilizer.errors import BackendUnavailable
from tests.integration.test_dashboard import Nodes, client_for, data_until, nodes, row
from tests.support.fakes import FakeSocket

__all__ = ["nodes"]  # the fixture, re-exported for pytest


async def test_a_group_shows_its_members_on_every_node(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    for n in range(3):
        await a.connect(f"a{n}", FakeSocket(f"a{n}"))
        await a.join_group(f"a{n}", "big")
    for n in range(100):  # on b: 50 groups of 2, each larger than b's share of "big"
        await b.connect(f"b{n}", FakeSocket(f"b{n}"))
        await b.join_group(f"b{n}", f"other-{n // 2:02}")
    await b.connect("b-big", FakeSocket("b-big"))
    await b.join_group("b-big", "big")
    async with client_for(a) as http:
        data = await data_until(http, lambda d: row(d, "b").get("connections") == 101)
    assert data["groups"][:2] == [{"group": "big", "members": 4},
                                  {"group": "other-00", "members": 2}]
    assert len(await a.get_group_members("big")) == 4
    assert data["groups_counted"] == "cluster"


async def test_without_the_store_the_table_says_its_counts_are_the_reported_ones(
        nodes: Nodes, monkeypatch: pytest.MonkeyPatch) -> None:
    a = nodes("a")
    await a.start()
    for n in range(2):
        await a.connect(f"a{n}", FakeSocket(f"a{n}"))
        await a.join_group(f"a{n}", "room")

    async def unreachable(groups: Sequence[str]) -> dict[str, int]:
        raise BackendUnavailable("the store is down")

    monkeypatch.setattr(a, "count_group_members", unreachable)
    data = await snapshot(a)
    assert data["groups"] == [{"group": "room", "members": 2}]
    assert data["groups_counted"] == "reported"
