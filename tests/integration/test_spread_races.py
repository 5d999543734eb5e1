"""Membership changes of the spread key layout (keys.py) that race, and the time they are
given: real servers (a three-master Cluster, and one Redis asked to spread).

A join lists the group in the client's set, then adds the client to the group's set; a
leave on another node that runs whole between those two steps took the client out of the
group's set before the join put it there. Without a last check the join left a member (and
a presence entry) that no listing names, so that no end, sweep or settle ever took it out.

A spread change takes several round trips: the node and the emitter give it the budget its
layout's steps need (GroupStore.change_round_trips), checked here against the round trips
it really makes one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

import pytest

from stabilizer import WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.emitter import Emitter
from stabilizer.emitter import base as emitter_base
from stabilizer.node import context as node_context
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

__all__ = ["cluster"]  # the fixture, re-exported for pytest

T = TypeVar("T")
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


class Waves:
    """The round trips one bounded call makes one after another: a call of the store
    started while none of it is in flight begins a new one (calls made at once share it)."""

    def __init__(self) -> None:
        self.count = 0
        self._in_flight = 0

    def start(self) -> None:
        if self._in_flight == 0:
            self.count += 1
        self._in_flight += 1

    def done(self, _: object = None) -> None:
        self._in_flight -= 1


# the call being measured (its tasks inherit it; the node's background tasks do not)
MEASURED: ContextVar[Waves | None] = ContextVar("measured", default=None)


def count_round_trips(core: RedisCore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count the store's calls, and its batched ones, in the call being MEASURED."""
    call = core.call

    async def counted(awaitable: Awaitable[Any], op: str) -> Any:
        waves = MEASURED.get()
        if waves is None:
            return await call(awaitable, op)
        waves.start()
        try:
            return await call(awaitable, op)
        finally:
            waves.done()

    def submit(batcher: ScriptBatcher, keys: list[str], args: list[Any],
               *, _submit: Any = ScriptBatcher.submit) -> Awaitable[Any]:
        sent = _submit(batcher, keys, args)
        waves = MEASURED.get()
        if waves is not None and isinstance(sent, asyncio.Future):  # (a batch's)
            waves.start()
            sent.add_done_callback(waves.done)
        return sent  # type: ignore[no-any-return]

    monkeypatch.setattr(core, "call", counted)
    monkeypatch.setattr(ScriptBatcher, "submit", submit)


def budgets(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(what, round trips given, round trips made) of each group change and route that
    `module` bounds with within_round_trips from now on."""
    seen: list[tuple[str, int, int]] = []
    bounded = node_context.within_round_trips

    async def measured(awaitable: Awaitable[T], op_timeout: float, round_trips: int,
                       *args: Any) -> T:
        what = getattr(awaitable, "__qualname__", "")
        if what not in CHANGES:
            return await bounded(awaitable, op_timeout, round_trips, *args)
        waves = Waves()
        token = MEASURED.set(waves)
        try:
            return await bounded(awaitable, op_timeout, round_trips, *args)
        finally:
            MEASURED.reset(token)
            seen.append((what, round_trips, waves.count))

    monkeypatch.setattr(module, "within_round_trips", measured)
    return seen


CHANGES = {"RedisGroups.join", "RedisGroups.leave", "RedisGroups.route_change"}


@BOTH
@pytest.mark.parametrize("history", [0, 10], ids=["no-history", "history"])
async def test_an_emitters_group_changes_get_the_round_trips_their_steps_take(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, history: int) -> None:
    """Each bounded call of an emitter's join_group and leave_group is given at least as
    many round trips as it makes one after another (a spread join of a client on a node:
    four or five; before, it was given one, and a store slower than half an op_timeout a
    round trip cut it off, the client's node never told)."""
    a = cluster("a", history_size=history, cluster_events=True, **SPREAD)
    await started(a)
    bob = FakeSocket("bob")
    await a.connect("bob", bob)
    config = a.config.replace(node_id=None)
    async with Emitter(config=config) as emitter:
        await emitter.get_nodes()  # (opened: what is measured is the change alone)
        backend: Any = emitter._backend
        count_round_trips(backend._core, monkeypatch)
        seen = budgets(emitter_base, monkeypatch)
        await emitter.join_group("bob", "room")
        await emitter.leave_group("bob", "room")
    assert_covered(seen, join_steps=3)
    assert await a.get_group_members("room") == []



def assert_covered(seen: list[tuple[str, int, int]], join_steps: int) -> None:
    """A join, its route, a leave and its route were each given (the middle of each item)
    at least the round trips they made (the last); the join made `join_steps` or more, so
    the layout's steps were counted."""
    assert [what for what, _, _ in seen] == [
        "RedisGroups.join", "RedisGroups.route_change", "RedisGroups.leave",
        "RedisGroups.route_change"]
    assert seen[0][2] >= join_steps, seen
    for _, given, made in seen:
        assert given >= made, seen

@BOTH
async def test_a_nodes_remote_group_changes_get_the_round_trips_their_steps_take(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same budget for a node changing the groups of a client on another node."""
    a = cluster("a", cluster_events=True, **SPREAD)
    b = cluster("b", cluster_events=True, **SPREAD)
    await started(a, b)
    await a.connect("bob", FakeSocket("bob"))
    count_round_trips(spread_backend(b)._core, monkeypatch)
    seen = budgets(node_context, monkeypatch)
    await b.join_group("bob", "room")
    await b.leave_group("bob", "room")
    assert_covered(seen, join_steps=4)
