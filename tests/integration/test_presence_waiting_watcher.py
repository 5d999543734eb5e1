"""A presence subscribe whose join waits (for its client's membership turn: another change
of the client's memberships is under way) while the channel's last other local member
leaves. The node stops following the channel then, and used to drop every watcher of it,
the waiting one too: its join went ahead and the client got its reply and presence_state,
then never a presence_diff (its copy of the presence stayed wrong until it reconnected).
The waiting watcher must survive, and hear of later changes once its join lands."""

from __future__ import annotations

import asyncio
import json

import pytest

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.v2 import ChannelRequest
from stabilizer.services.delivery.groups import Membership
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket


def _frames(sent: str | list[str]) -> list[dict[str, object]]:
    return [json.loads(text) for text in ([sent] if isinstance(sent, str) else sent)]


def _diffs(sock: FakeSocket) -> list[dict[str, object]]:
    frames = [json.loads(text) for text in sock.texts()]
    return [frame for frame in frames if frame.get("type") == "presence_diff"]


def joins_noted(membership: Membership, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a join begins (a presence subscribe's: its watcher began, and it
    is past begin()); the join then goes on as it would."""
    join = membership.join
    joining = asyncio.Event()

    async def noted(client_id: str, group: str, meta_json: str | None = None,
                    **more: object) -> None:
        joining.set()
        await join(client_id, group, meta_json, **more)  # type: ignore[arg-type]

    monkeypatch.setattr(membership, "join", noted)
    return joining


async def test_a_watcher_waiting_for_its_join_survives_the_last_other_member_leaving(
        make_manager: ManagerFactory, config: WebSocketConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager: WebSocketConnectionManager = make_manager(config)

    @manager.on_subscribe
    def allow(request: SubscribeRequest) -> dict[str, str]:
        return {"name": request.client_id}

    await manager.start()
    socks = {name: FakeSocket(name) for name in ("alice", "bob", "carol")}
    conns = {}
    for name, sock in socks.items():
        await manager.connect(name, sock)
        conn = manager.get_connection(name)
        assert conn is not None
        conns[name] = conn
    node = manager._node
    channels = node.sessions.channels
    await channels.subscribe(conns["alice"], ChannelRequest(1, "room", None))

    membership = node.membership
    join = membership.join  # (put back once bob's subscribe is through)
    joining = joins_noted(membership, monkeypatch)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_bobs_turn() -> None:  # another change of bob's memberships, under way
        async with membership.turn("bob"):
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold_bobs_turn())
    await held.wait()
    subscribing: asyncio.Task[str | list[str]] = asyncio.create_task(
        channels.subscribe(conns["bob"], ChannelRequest(1, "room", None, presence=True)))
    await joining.wait()  # bob's join waits for his turn
    left = _frames(await channels.unsubscribe(conns["alice"], ChannelRequest(2, "room", None)))
    assert "error" not in left[0]  # alice, the last local member, is out: room unfollowed
    release.set()
    await holder
    got = _frames(await subscribing)
    assert [frame["type"] for frame in got] == ["reply", "presence_state"]
    assert set(got[1]["presence"]) == {"bob"}  # type: ignore[arg-type]

    monkeypatch.setattr(membership, "join", join)
    await channels.subscribe(conns["carol"], ChannelRequest(1, "room", None))
    bob = socks["bob"]
    while not any("carol" in json.dumps(diff) for diff in _diffs(bob)):
        await bob.next()  # (each frame he gets, awaited: times out if none comes)

