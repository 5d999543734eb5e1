"""A close's claim on the away list, without history, in the split layouts.

Where presence and the client's group set live in different hash slots (spread keys, or
several presence buckets), the step that removes a closing client's presence cannot end its
groups; the settle does that after. A node that died in between left the groups for good
(defect 34, pinned in tests/faults/test_regressions.py). So a close of a client that may
have groups first claims it on the away list for the orphan grace: if the settle never
comes, the sweep ends the groups. These tests pin what the claim costs an ordinary close:
it is made only for a client that may have groups, and the settle takes it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConnectionManager
from tests.support.fakes import FakeSocket
from tests.support.fast_nodes import (
    LIMIT,
    Node,
    dies_after_removal,
    node,
    started_pair,
    sweep_ends,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LAYOUTS = pytest.mark.parametrize(
    "layout", [{"redis_spread_keys": True}, {"presence_buckets": 2}], ids=["spread", "buckets"])

__all__ = ["node"]  # the fixture, re-exported for pytest


async def away(manager: WebSocketConnectionManager) -> list[str]:
    """The clients on the away list."""
    backend: Any = manager.backend
    return sorted(c.decode() for c in await backend.client.zrange(backend.keys.away, 0, -1))


class Seen(list[list[str]]):
    """The away list as each settle found it; `event` is set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()


def away_at_settle(manager: WebSocketConnectionManager,
                   monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Record the away list each time a close of `manager` begins its settle (the presence
    is removed by then, the groups not yet ended)."""
    seen = Seen()
    closing: Any = manager._node.closing
    original = closing.settle

    async def settle(*args: Any, **kwargs: Any) -> None:
        seen.append(await away(manager))
        seen.event.set()
        await original(*args, **kwargs)

    monkeypatch.setattr(closing, "settle", settle)
    return seen


@LAYOUTS
async def test_a_member_is_claimed_until_its_close_ends_its_groups(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    a, b = await started_pair(node, **layout)
    seen = away_at_settle(a, monkeypatch)
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")
    await a.disconnect("x", code=CloseCode.NORMAL)
    assert seen == [["x"]], "no claim stood between the removal and the groups' end"
    assert await b.get_group_members("room") == []
    assert await away(a) == [], "the settle left its claim for the sweep"


async def no_group(manager: WebSocketConnectionManager) -> None:
    """Nothing joined."""


async def left_them(manager: WebSocketConnectionManager) -> None:
    """Joined and left: its settle would find no group to end, so a claim would wait for
    the sweep."""
    await manager.join_group("x", "room")
    await manager.leave_group("x", "room")


@LAYOUTS
@pytest.mark.parametrize("before", [no_group, left_them], ids=["no group", "left them"])
async def test_a_client_without_groups_is_not_claimed(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any],
        before: Callable[[WebSocketConnectionManager], Awaitable[None]]) -> None:
    a = node("a", **layout)
    await a.start()
    seen = away_at_settle(a, monkeypatch)
    await a.connect("x", FakeSocket("x"))
    await before(a)
    await a.disconnect("x", code=CloseCode.NORMAL)
    assert seen == [[]]
    assert await away(a) == []


@LAYOUTS
async def test_a_join_under_way_when_the_close_begins_is_claimed(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """The connection lists a joined group only once its node follows the group; a close
    that begins before then still finds the join's write coming, and claims the client."""
    a, b = await started_pair(node, **layout)
    seen = away_at_settle(a, monkeypatch)
    await a.connect("x", FakeSocket("x"))
    groups: Any = a.backend.groups
    subscribe = groups.subscribe
    subscribing, go_on = asyncio.Event(), asyncio.Event()

    async def held(group: str) -> None:
        subscribing.set()
        await go_on.wait()
        await subscribe(group)

    monkeypatch.setattr(groups, "subscribe", held)
    joining = asyncio.create_task(a.join_group("x", "room"))
    await subscribing.wait()
    closing = asyncio.create_task(a.disconnect("x", code=CloseCode.NORMAL))
    await seen.event.wait()  # the close's settle begins (then waits for the join's turn)
    go_on.set()
    await asyncio.gather(joining, closing)
    assert seen == [["x"]]
    assert await b.get_group_members("room") == []
    assert await away(a) == []


@LAYOUTS
async def test_a_remote_join_into_a_closing_client_is_claimed_by_the_joiner(
        node: Node, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """A close of a client with no group makes no claim. Another node's join that lands
    before the close removes the client's presence lists a group the close never knew of;
    if the closing node dies before its end, the joiner's claim is what leaves the group
    to the sweep."""
    a, b = await started_pair(node, **layout)
    await a.connect("x", FakeSocket("x"))
    presence: Any = a.backend.presence
    unregister = presence.unregister
    removing, go_on = asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        removing.set()  # the close made its claim decision: none
        await go_on.wait()
        return await unregister(*args, **kwargs)

    monkeypatch.setattr(presence, "unregister", held)
    dies_after_removal(a, monkeypatch)  # before its end
    swept = sweep_ends((a, b), "x", monkeypatch)
    closing = asyncio.create_task(a.disconnect("x", code=CloseCode.NORMAL))
    async with asyncio.timeout(5.0):
        await removing.wait()
    await b.join_group("x", "room")
    go_on.set()
    await closing
    async with asyncio.timeout(LIMIT):  # (the old code: nothing on the away list)
        await swept.wait()
    assert await b.get_group_members("room") == []
