"""Membership changes of the spread key layout (keys.py) that race, and the time they are
given: real servers (a three-master Cluster, and one Redis asked to spread).

A join lists the group in the client's set, then adds the client to the group's set; a
leave on another node that runs whole between those two steps took the client out of the
group's set before the join put it there. Without a last check the join left a member (and
a presence entry) that no listing names, so that no end, sweep or settle ever took it out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

__all__ = ["cluster"]  # the fixture, re-exported for pytest

SPREAD = {"redis_spread_keys": True}  # (a Cluster spreads anyway)
BOTH = pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)


def spread_backend(manager: WebSocketConnectionManager) -> RedisBackend:
    backend = manager.backend
    assert isinstance(backend, RedisBackend)
    assert backend.keys.spread
    return backend


def carried_out(manager: WebSocketConnectionManager,
                monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once `manager` carried out a change another node routed to it."""
    done = asyncio.Event()
    membership: Any = manager._node.membership
    original = membership._carry_out

    async def watched(*args: Any) -> None:
        await original(*args)
        done.set()

    monkeypatch.setattr(membership, "_carry_out", watched)
    return done


@BOTH
@pytest.mark.parametrize("history", [0, 10], ids=["no-history", "history"])
async def test_a_join_racing_a_leave_from_another_node_leaves_no_member_behind(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, history: int) -> None:
    """The leave of node b runs whole between the two steps of node a's join (its client's
    step, then its group's): the leave wins, in the store as on a, the client's node."""
    a = cluster("a", history_size=history, **SPREAD)
    b = cluster("b", history_size=history, **SPREAD)
    await started(a, b)
    await a.connect("bob", FakeSocket("bob"))
    steps = spread_backend(a).groups._spread
    group_step = steps._group
    between, go_on = asyncio.Event(), asyncio.Event()

    async def held(group: str, action: str, *args: Any) -> Any:
        if action == "join" and not go_on.is_set():
            between.set()
            await go_on.wait()
        return await group_step(group, action, *args)

    monkeypatch.setattr(steps, "_group", held)
    routed = carried_out(a, monkeypatch)
    joining = asyncio.create_task(a.join_group("bob", "room", presence={"name": "Bob"}))
    await between.wait()  # (bob's set lists the room; the room's set lacks bob)
    await b.leave_group("bob", "room")
    go_on.set()
    await joining

    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("bob") == []
    assert dict(await b.get_presence("room")) == {}
    async with asyncio.timeout(5.0):  # (a bound, no pace: the leave b routed to a)
        await routed.wait()
    conn = a.get_connection("bob")
    assert conn is not None
    assert conn.groups == set()

    await a.disconnect("bob")  # and nothing of bob is left behind
    assert await b.get_group_members("room") == []
    assert dict(await b.get_presence("room")) == {}


@BOTH
async def test_a_join_whose_group_stays_listed_stands_with_its_presence(
        cluster: Cluster) -> None:
    """The last step of a join only checks: an ordinary join (and one of a member again)
    stands, with its presence entry, and its leave takes both out."""
    a, b = cluster("a", **SPREAD), cluster("b", **SPREAD)
    await started(a, b)
    await a.connect("bob", FakeSocket("bob"))
    for _ in range(2):
        await b.join_group("bob", "room", presence={"name": "Bob"})
        assert await a.get_group_members("room") == ["bob"]
        assert await a.get_client_groups("bob") == ["room"]
        assert list(await a.get_presence("room")) == ["bob"]
    await b.leave_group("bob", "room")
    assert await a.get_group_members("room") == []
    assert await a.get_client_groups("bob") == []
    assert dict(await a.get_presence("room")) == {}
