"""A subscribe still being decided (its on_subscribe hook awaits, say, a database) when the
client's socket is replaced by a newer one of the same client id: the hook answered for
the old socket, so nothing is joined. Before, the join went by client id and landed on the
newer socket, which never asked and for which the hook was never asked: it got the
channel's messages and a presence entry."""

from __future__ import annotations

import asyncio
import json

import pytest

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.v2 import ChannelRequest
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket


@pytest.mark.parametrize("presence", [False, True])
async def test_a_subscribe_decided_after_its_socket_was_replaced_joins_nothing(
        make_manager: ManagerFactory, presence: bool) -> None:
    manager: WebSocketConnectionManager = make_manager(
        WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120))
    asked, answer = asyncio.Event(), asyncio.Event()

    async def hook(request: SubscribeRequest) -> object:
        asked.set()
        await answer.wait()
        return {"seat": 1}

    manager.on_subscribe(hook)
    await manager.start()
    old_socket = FakeSocket("old")
    await manager.connect("alice/tab", old_socket)
    old = manager.get_connection("alice/tab")
    assert old is not None
    channels = manager._node.sessions.channels
    subscribing = asyncio.create_task(
        channels.subscribe(old, ChannelRequest(1, "room", None, presence=presence)))
    await asyncio.wait_for(asked.wait(), 5)
    new_socket = FakeSocket("new")
    await manager.connect("alice/tab", new_socket)  # the same client id: replaces the old
    answer.set()
    reply = await subscribing
    first = json.loads(reply[0] if isinstance(reply, list) else reply)
    assert first["error"]["code"] == "unavailable"
    new = manager.get_connection("alice/tab")
    assert new is not None
    assert new is not old
    assert new.groups == frozenset()
    assert await manager.get_group_members("room") == []
    assert await manager.get_presence("room") == {}
