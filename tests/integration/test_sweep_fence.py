"""A sweep in the split layouts, and a client that comes back while it runs.

Where presence and a client's groups live in different hash slots (spread keys, or several
presence buckets), a sweep reads the client's presence (or its session) in one step and
ends its groups in another. A client that came back between the two used to lose what it
did meanwhile:

- without history, a join made after reconnecting was ended by the sweep (the store lost
  it; the client's node went on delivering the group to it);
- with history, a resume that loaded the session before the sweep's end opened an empty
  one after it: the client was told its groups were back, the store had none of them;
- with several presence buckets, the sweep's end did not check for a live session: a
  resume that completed meanwhile had its session and groups ended under it.

Each test holds a sweep just before its end (whichever node sweeps first), lets the client
come back, then lets the sweep finish, and checks that the store and the client's node
agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConnectionManager
from stabilizer.backends.redis.sessions import RedisSessions
from stabilizer.backends.redis.spread import SpreadSteps
from tests.integration.test_groups_history import resume_on
from tests.support.fakes import FakeSocket
from tests.support.fast_nodes import LIMIT, Node, dies_after_removal, node, started_pair

pytestmark = [pytest.mark.redis, pytest.mark.slow]

HISTORY: dict[str, Any] = {"history_size": 10, "session_ttl": 0.3}
LAYOUTS = pytest.mark.parametrize("layout", [
    {"redis_spread_keys": True},
    {"redis_spread_keys": True, "presence_buckets": 2},
    {"presence_buckets": 2},
], ids=["spread", "spread-buckets", "buckets"])

__all__ = ["node"]  # the fixture, re-exported for pytest


class Gate:
    """Holds the first call that reaches it until `opened` is set; `reached` is set when
    it arrives, `done` once the held call returned."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()
        self.done = asyncio.Event()
        self.used = False

    async def hold(self, call: Any) -> Any:
        if self.used:
            return await call
        self.used = True
        self.reached.set()
        await self.opened.wait()
        try:
            return await call
        finally:
            self.done.set()


def hold_sweep_end(monkeypatch: pytest.MonkeyPatch, client_id: str) -> Gate:
    """Hold the first sweep (of any node) that is about to end `client_id`: the spread
    layout's end of the due clients, or the buckets layout's END_SESSION of one."""
    gate = Gate()
    finish = SpreadSteps.finish
    end = RedisSessions.end

    async def held_finish(self: SpreadSteps, clients: Any, deadline: int, mode: str,
                          **kwargs: Any) -> Any:
        if mode == "sweep" and client_id in clients:
            return await gate.hold(finish(self, clients, deadline, mode, **kwargs))
        return await finish(self, clients, deadline, mode, **kwargs)

    async def held_end(self: RedisSessions, cid: str, **kwargs: Any) -> Any:
        if cid == client_id and kwargs.get("conn_id") is None:
            return await gate.hold(end(self, cid, **kwargs))
        return await end(self, cid, **kwargs)

    monkeypatch.setattr(SpreadSteps, "finish", held_finish)
    monkeypatch.setattr(RedisSessions, "end", held_end)
    return gate


def hold_after_load(monkeypatch: pytest.MonkeyPatch, client_id: str) -> Gate:
    """Hold the first load of `client_id`'s session once it has read it."""
    gate = Gate()
    load = RedisSessions.load

    async def loaded(result: Any) -> Any:
        return result

    async def held(self: RedisSessions, cid: str) -> Any:
        state = await load(self, cid)
        if cid == client_id:
            return await gate.hold(loaded(state))
        return state

    monkeypatch.setattr(RedisSessions, "load", held)
    return gate


async def agree(manager: WebSocketConnectionManager, client_id: str, group: str) -> bool:
    """Whether the store lists `client_id` in `group` exactly when its connection on
    `manager` is a member there; returns the membership."""
    conn = manager.get_connection(client_id)
    assert conn is not None
    member = group in conn.groups
    assert (client_id in await manager.get_group_members(group)) == member
    return member


@LAYOUTS
async def test_a_join_after_a_reconnect_outlives_a_sweep_that_found_the_client_gone(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    a, b = await started_pair(node, **layout)
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")
    dies_after_removal(a, monkeypatch)  # x's groups go to the sweep
    gate = hold_sweep_end(monkeypatch, "x")
    await a.disconnect("x", code=CloseCode.NORMAL)
    async with asyncio.timeout(LIMIT):
        await gate.reached.wait()  # a sweep found x gone and is about to end it
    await b.connect("x", FakeSocket("x2"))  # back, with no groups (no history)
    await b.join_group("x", "lobby")
    gate.opened.set()
    async with asyncio.timeout(LIMIT):
        await gate.done.wait()
    assert await agree(b, "x", "lobby")  # (the old code's sweep ended it)
    assert await b.get_group_members("room") == []


async def left_resumable(node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any],
                         ) -> tuple[WebSocketConnectionManager, Gate]:
    """Nodes a and b with history; x joined the room on a and left it resumable (for
    session_ttl), and a sweep (held) is about to end its session. Returns b and the gate."""
    a, b = await started_pair(node, **layout, **HISTORY)
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")
    gate = hold_sweep_end(monkeypatch, "x")
    await a.disconnect("x", code=CloseCode.GOING_AWAY)
    async with asyncio.timeout(LIMIT):
        await gate.reached.wait()
    return b, gate


@LAYOUTS
async def test_a_resume_completed_while_a_sweep_waits_keeps_its_session(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    b, gate = await left_resumable(node, monkeypatch, layout)
    _, (recovered, _, _) = await resume_on(b, "x", {})
    assert recovered
    gate.opened.set()
    async with asyncio.timeout(LIMIT):
        await gate.done.wait()
    assert await agree(b, "x", "room")  # (the old code's buckets sweep ended it)
    state = await b.backend.sessions.load("x")
    assert state is not None
    assert state.groups == ["room"]


@LAYOUTS
async def test_a_resume_whose_session_a_sweep_ends_after_its_load_begins_afresh(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    b, sweep = await left_resumable(node, monkeypatch, layout)
    load = hold_after_load(monkeypatch, "x")
    resuming = asyncio.create_task(resume_on(b, "x", {}))
    async with asyncio.timeout(LIMIT):
        await load.reached.wait()  # the resume read the session, groups and all
    sweep.opened.set()
    async with asyncio.timeout(LIMIT):
        await sweep.done.wait()  # and the sweep ended it
    load.opened.set()
    async with asyncio.timeout(LIMIT):
        _, (recovered, _, _) = await resuming
    # the old code told the client it recovered, its group restored on its node only
    assert not recovered
    assert not await agree(b, "x", "room")
