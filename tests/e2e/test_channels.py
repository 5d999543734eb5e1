"""Channels v2 clients subscribe to and publish on themselves (docs/protocol.md 6.6),
through tests/e2e/v2_app.py's hooks, on real uvicorn replicas (several on one real Redis),
with the Python client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from stabilizer import RPCError
from tests.e2e.conftest import V2Replicas
from tests.e2e.v2_clients import user
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

class Inbox:
    """What an on_message callback received, with a wait for the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()

    def __call__(self, message: str | bytes) -> None:
        self.queue.put_nowait(message)

    async def next(self) -> str | bytes:
        async with asyncio.timeout(5):
            return await self.queue.get()


async def members(server: UvicornProcess, group: str) -> list[str]:
    return list((await asyncio.to_thread(server.get, f"/admin/groups/{group}"))[1])


async def asked(server: UvicornProcess) -> list[str]:
    return list((await asyncio.to_thread(server.get, "/admin/asked"))[1])


async def send_group(server: UvicornProcess, group: str, message: object) -> None:
    await asyncio.to_thread(server.post, f"/admin/send_group/{group}", {"message": message})


async def test_the_hook_decides_and_a_subscription_gets_its_channels_messages(
    v2_replicas: V2Replicas,
) -> None:
    (server,) = v2_replicas()
    async with user(server, "alice") as alice:
        room = Inbox()
        await alice.subscribe("public:room", room, params={"seat": 3})
        await alice.subscribe("private:alice")  # no callback: its messages go to recv()
        assert await members(server, "public:room") == [alice.client_id]

        await send_group(server, "public:room", "to the room")
        await send_group(server, "private:alice", "to alice only")
        assert await room.next() == "to the room"
        async with asyncio.timeout(5):
            assert await alice.recv() == "to alice only"

        for channel, code in (("private:bob", "forbidden"), ("secret", "no_such_channel"),
                              ("boom", "internal")):
            with pytest.raises(RPCError) as refused:
                await alice.subscribe(channel)
            assert refused.value.code == code, channel
            assert await members(server, channel) == []
        assert await asked(server) == ["public:room", "private:alice", "private:bob",
                                       "secret", "boom"]
        with pytest.raises(ValueError, match="channel"):
            await alice.subscribe("")

        await alice.unsubscribe("public:room")
        assert await members(server, "public:room") == []
        await send_group(server, "public:room", "after leaving")
        await send_group(server, "private:alice", "still subscribed")
        async with asyncio.timeout(5):
            assert await alice.recv() == "still subscribed"
        assert room.queue.empty()


@pytest.mark.redis
async def test_a_publish_reaches_subscribers_on_every_replica_as_the_hook_rewrote_it(
    v2_replicas: V2Replicas,
) -> None:
    left, right = v2_replicas(2)
    async with user(left, "alice") as alice, user(right, "bob") as bob:
        assert (alice.node_id, bob.node_id) == ("replica-0", "replica-1")
        alices, bobs = Inbox(), Inbox()
        await alice.subscribe("public:lobby", alices)
        await bob.subscribe("public:lobby", bobs)
        await alice.publish("public:lobby", "hello")
        expected = '{"from":"alice","text":"hello"}'  # rewritten by on_publish
        assert await bobs.next() == expected
        assert await alices.next() == expected  # the publisher is a member too
        await bob.publish("public:lobby", {"kind": "json", "n": 1})
        assert await alices.next() == '{"kind":"json","n":1}'
        assert await bobs.next() == '{"kind":"json","n":1}'

        with pytest.raises(RPCError) as refused:
            await bob.publish("readonly:news", "hi")
        assert (refused.value.code, refused.value.message) == ("read_only",
                                                               "nobody publishes here")
        with pytest.raises(TypeError, match="publish data"):
            await bob.publish("public:lobby", 5)  # type: ignore[arg-type]
        assert alices.queue.empty()
        assert bobs.queue.empty()


async def test_a_reconnect_without_history_subscribes_again(v2_replicas: V2Replicas) -> None:
    (server,) = v2_replicas()  # no history: a reconnect keeps no group memberships
    async with user(server, "alice") as alice:
        room = Inbox()
        await alice.subscribe("public:room", room)
        first = alice.session
        await asyncio.to_thread(server.post, "/admin/disconnect_user/alice?code=1012")

        async def subscribed_again() -> None:
            while await asked(server) != ["public:room", "public:room"] or (
                    await members(server, "public:room") != [alice.client_id]):
                await asyncio.sleep(0.02)

        async with asyncio.timeout(10):
            await subscribed_again()
        assert alice.session is not first
        await send_group(server, "public:room", "after the reconnect")
        assert await room.next() == "after the reconnect"


async def test_a_resumed_session_keeps_its_subscriptions_without_asking_again(
    v2_replicas: V2Replicas,
) -> None:
    (server,) = v2_replicas(history_size=100)
    async with user(server, "alice") as alice:
        room = Inbox()
        await alice.subscribe("public:room", room)
        await send_group(server, "public:room", "before")
        assert await room.next() == "before"
        first = alice.session
        await asyncio.to_thread(server.post, "/admin/disconnect_user/alice?code=1012")
        await send_group(server, "public:room", "while away")  # kept for the session
        assert await room.next() == "while away"  # replayed to the subscription
        assert alice.session is not first
        assert alice.session is not None
        assert alice.session.resumed
        await send_group(server, "public:room", "after")
        assert await room.next() == "after"
        assert await asked(server) == ["public:room"]  # the hook was not asked again


async def test_the_frames_a_raw_socket_gets_for_channel_requests(v2_replicas: V2Replicas) -> None:
    (server,) = v2_replicas()
    token = server.post("/admin/token/alice")["token"]
    async with raw_connect(f"{server.ws}/ws", subprotocols=["stabilizer.v2"]) as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        assert json.loads(await ws.recv())["type"] == "session"

        async def answer(frame: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(frame))
            async with asyncio.timeout(5):
                return dict(json.loads(await ws.recv()))

        assert await answer({"type": "subscribe", "id": 1, "channel": "public:raw"}) == {
            "type": "reply", "id": 1, "result": {"channel": "public:raw"}}
        assert await answer({"type": "publish", "id": 2, "channel": "public:raw",
                             "data": [1]}) == {"type": "message", "data": "[1]",
                                               "channel": "public:raw"}
        assert json.loads(await ws.recv()) == {"type": "reply", "id": 2,
                                               "result": {"channel": "public:raw"}}
        for frame, problem in (
            ({"type": "subscribe", "id": 3, "channel": ""},
             "subscribe: channel cannot be empty"),
            ({"type": "publish", "id": 4, "channel": "public:raw", "data": 5},
             "publish: data must be a string, an object or an array"),
            ({"type": "publish", "id": 5, "channel": "public:raw"},
             "publish: data must be a string, an object or an array"),
        ):
            reply = await answer(frame)
            assert reply == {"type": "reply", "id": frame["id"], "error": {
                "code": "bad_request", "message": problem}}
        refused = await answer({"type": "unsubscribe", "id": 6, "channel": ["x"]})
        assert refused["error"]["code"] == "bad_request"
        assert (await answer({"type": "unsubscribe", "channel": "x"}))["code"] == "bad_frame"
