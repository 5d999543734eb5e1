"""A publish on a members-only channel (``ChannelOptions(publish="members")``) is checked
for membership after the ``on_publish`` hook too: the hook is awaited, and a client the
server takes out of the channel meanwhile (``leave_group``: a ban, say) must not publish
with the allowance it had before. Before, the membership was checked only before the hook:
the removed client's publication reached every member."""

from __future__ import annotations

import asyncio
import json

from stabilizer import (
    ChannelOptions,
    PublishRequest,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.pure.v2 import ChannelRequest
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket


async def test_a_member_taken_out_while_its_publish_hook_runs_does_not_publish(
        make_manager: ManagerFactory, config: WebSocketConfig) -> None:
    settings = config.replace(channel_namespaces={"m:": ChannelOptions(publish="members")})
    manager: WebSocketConnectionManager = make_manager(settings)
    entered, go = asyncio.Event(), asyncio.Event()

    @manager.on_subscribe
    def allow(request: SubscribeRequest) -> bool:
        return True

    @manager.on_publish
    async def hold(request: PublishRequest) -> object:
        entered.set()
        await go.wait()  # the server bans the client meanwhile
        return request.data

    await manager.start()
    socks = {name: FakeSocket(name) for name in ("bad", "good")}
    for name, sock in socks.items():
        await manager.connect(name, sock)
        await manager.join_group(name, "m:room")
    bad = manager.get_connection("bad")
    assert bad is not None
    channels = manager._node.sessions.channels
    publishing = asyncio.create_task(
        channels.publish(bad, ChannelRequest(5, "m:room", "spam after the ban")))
    await entered.wait()
    await manager.leave_group("bad", "m:room")
    go.set()

    reply = json.loads(await publishing)
    assert reply["id"] == 5
    assert reply["error"]["code"] == "forbidden"
    await manager.send_to_group("m:room", "after")  # the next thing the member gets
    assert await socks["good"].next() == "after"
