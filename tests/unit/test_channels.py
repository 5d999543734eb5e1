"""Client subscriptions and publications (docs/protocol.md 6.6) on the embedded backend: the
frames' parsing, the hooks' registration, and every way the hooks decide."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stabilizer import (
    ConfigError,
    PublishRequest,
    RPCError,
    SubscribeRequest,
    WebSocketConnectionManager,
)
from stabilizer.pure.client_v2 import channel_frame
from stabilizer.pure.v2 import BadCallError, ChannelRequest, ProtocolError, parse_channel_request
from tests.support.fakes import FakeSocket


def test_channel_requests_parse_and_refuse_what_is_not_usable() -> None:
    assert parse_channel_request("subscribe", {"id": 1, "channel": "a", "params": [1]}) == (
        ChannelRequest(1, "a", [1]))
    assert parse_channel_request("unsubscribe", {"id": "k", "channel": "a", "data": 1}) == (
        ChannelRequest("k", "a", None))
    assert parse_channel_request("publish", {"id": 2, "channel": "a", "data": {"x": 1}}) == (
        ChannelRequest(2, "a", {"x": 1}))
    for kind, body in (("subscribe", {"id": 1}), ("subscribe", {"id": 1, "channel": 5}),
                       ("subscribe", {"id": 1, "channel": "x" * 257}),
                       ("publish", {"id": 1, "channel": "a", "data": 1.5}),
                       ("publish", {"id": 1, "channel": "a", "data": None})):
        with pytest.raises(BadCallError):
            parse_channel_request(kind, body)


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
@pytest.mark.parametrize("ident", [None, -1, 1.5, True, "", "x" * 65])
def test_an_unusable_id_is_refused_in_the_frames_own_name(kind: str, ident: object) -> None:
    with pytest.raises(ProtocolError, match=f"^{kind}: id must be ") as refused:
        parse_channel_request(kind, {"id": ident, "channel": "a", "data": "x"})
    assert not isinstance(refused.value, BadCallError)


def test_the_clients_channel_frames() -> None:
    assert json.loads(channel_frame("subscribe", 1, "room", {"seat": 2})) == {
        "type": "subscribe", "id": 1, "channel": "room", "params": {"seat": 2}}
    assert json.loads(channel_frame("publish", 2, "room", "hi")) == {
        "type": "publish", "id": 2, "channel": "room", "data": "hi"}
    assert json.loads(channel_frame("unsubscribe", 3, "room")) == {
        "type": "unsubscribe", "id": 3, "channel": "room"}
    with pytest.raises(ValueError, match="channel"):
        channel_frame("subscribe", 1, "", None)
    with pytest.raises(TypeError, match="publish data"):
        channel_frame("publish", 1, "room", 3)


def test_each_hook_is_set_once() -> None:
    manager = WebSocketConnectionManager()

    @manager.on_subscribe
    def allow(request: SubscribeRequest) -> bool:
        return True

    with pytest.raises(ConfigError, match="once"):
        manager.on_subscribe(allow)
    manager.on_publish(lambda request: request.data)
    with pytest.raises(ConfigError, match="once"):
        manager.on_publish(lambda request: request.data)
    with pytest.raises(ConfigError):
        WebSocketConnectionManager().on_publish("not callable")  # type: ignore[arg-type]


async def reply(manager: WebSocketConnectionManager, kind: str, channel: str,
                value: Any = None) -> dict[str, Any]:
    conn = manager.get_connection("alice")
    assert conn is not None
    channels = manager._node.sessions.channels
    action = {"subscribe": channels.subscribe, "unsubscribe": channels.unsubscribe,
              "publish": channels.publish}[kind]
    return dict(json.loads(await action(conn, ChannelRequest(9, channel, value))))


async def test_without_hooks_clients_can_neither_subscribe_nor_publish() -> None:
    async with WebSocketConnectionManager() as manager:
        await manager.connect("alice", FakeSocket("alice"))
        for kind in ("subscribe", "publish"):
            answer = await reply(manager, kind, "room", "hi")
            assert answer["error"]["code"] == "forbidden", kind
        assert await manager.get_group_members("room") == []
        assert await reply(manager, "unsubscribe", "room") == {
            "type": "reply", "id": 9, "result": {"channel": "room"}}


async def test_what_the_hooks_return_decides() -> None:
    async with WebSocketConnectionManager() as manager:
        alice = FakeSocket("alice")
        await manager.connect("alice", alice)
        seen: list[SubscribeRequest] = []

        @manager.on_subscribe
        async def decide(request: SubscribeRequest) -> bool | None:
            seen.append(request)
            return {"open": None, "yes": True, "no": False}[request.channel]

        @manager.on_publish
        def rewrite(request: PublishRequest) -> object:
            if request.channel == "closed":
                raise RPCError("closed", "no publishing", [1])
            return {"same": request.data, "upper": str(request.data).upper(),
                    "none": None, "false": False, "odd": {1}}[request.channel]

        assert (await reply(manager, "subscribe", "open", {"p": 1}))["result"] == {
            "channel": "open"}
        assert "result" in await reply(manager, "subscribe", "yes")
        assert (await reply(manager, "subscribe", "no"))["error"]["code"] == "forbidden"
        assert [(r.channel, r.params, r.client_id) for r in seen] == [
            ("open", {"p": 1}, "alice"), ("yes", None, "alice"), ("no", None, "alice")]
        assert await manager.get_client_groups("alice") == ["open", "yes"]

        await manager.join_group("alice", "same")
        await manager.join_group("alice", "upper")
        assert "result" in await reply(manager, "publish", "same", {"k": 1})
        assert "result" in await reply(manager, "publish", "upper", "hi")
        assert await alice.next_json() == {"k": 1}
        await alice.expect("HI")
        for channel, code in (("none", "forbidden"), ("false", "forbidden"),
                              ("odd", "internal"), ("closed", "closed")):
            assert (await reply(manager, "publish", channel, "x"))["error"]["code"] == code
        assert (await reply(manager, "publish", "closed", "x"))["error"]["data"] == [1]
