"""A presence subscribe whose join waits for its client's membership turn behind a
server-side leave of the same client from the same channel. The leave landed first and
ended the client's presence, the waiting subscribe's watcher with it: the join then went
ahead and the client got its reply and presence_state, a member again, then never a
presence_diff (its copy of the presence stayed wrong until it reconnected). A leave ordered
before the join must leave that join's watcher alone: it hears of later changes once its
join lands (whether other local members keep the channel followed meanwhile or not)."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.v2 import ChannelRequest
from tests.conftest import ManagerFactory
from tests.integration.test_presence_after_leave import presence_node
from tests.integration.test_presence_waiting_watcher import _diffs, _frames, joins_noted


@pytest.mark.parametrize("others", [("alice",), ()], ids=["others-stay", "last-member"])
async def test_a_leave_ordered_before_a_waiting_presence_join_keeps_its_watcher(
        make_manager: ManagerFactory, config: WebSocketConfig,
        monkeypatch: pytest.MonkeyPatch, others: tuple[str, ...]) -> None:
    manager: WebSocketConnectionManager = make_manager(config)
    socks = await presence_node(manager, *others, "bob", "carol")
    conns = {}
    for name in socks:
        conn = manager.get_connection(name)
        assert conn is not None
        conns[name] = conn
    channels = manager._node.sessions.channels
    for name in (*others, "bob"):  # bob is a member (no presence followed yet)
        await channels.subscribe(conns[name], ChannelRequest(1, "room", None))

    membership = manager._node.membership
    join = membership.join  # (put back once bob's subscribe is through)
    joining = joins_noted(membership, monkeypatch)
    groups = manager.backend.groups
    leave = groups.leave
    leaving, written = asyncio.Event(), asyncio.Event()

    async def held(client_id: str, group: str) -> object:
        leaving.set()  # the server's leave of bob holds his turn
        await written.wait()
        return await leave(client_id, group)

    monkeypatch.setattr(groups, "leave", held)
    taking_out = asyncio.create_task(manager.leave_group("bob", "room"))
    await leaving.wait()
    monkeypatch.setattr(groups, "leave", leave)
    subscribing: asyncio.Task[str | list[str]] = asyncio.create_task(
        channels.subscribe(conns["bob"], ChannelRequest(2, "room", None, presence=True)))
    await joining.wait()  # bob's join waits for his turn, behind the leave
    written.set()
    await taking_out
    got = _frames(await subscribing)
    assert [frame["type"] for frame in got] == ["reply", "presence_state"]
    assert set(got[1]["presence"]) == {*others, "bob"}  # type: ignore[arg-type]
    assert "room" in conns["bob"].groups  # a member again: the join came after the leave

    monkeypatch.setattr(membership, "join", join)
    await channels.subscribe(conns["carol"], ChannelRequest(1, "room", None))
    bob = socks["bob"]
    while not any("carol" in str(diff) for diff in _diffs(bob)):
        await bob.next()  # (each frame he gets, awaited: times out if none comes)
