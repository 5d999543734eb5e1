"""A resumed v2 session and the channels its client holds, over real sockets (uvicorn in the
test's loop, `websockets` clients), on the in-process backend and on Redis.

- A leave the server made while the client was away (no socket to tell) is told when it
  resumes: one ``unsubscribed`` frame per channel it held (those it names in ``channels``,
  and those it holds a position in) that the session no longer has. Before, the resume
  said ``recovered: true`` and nothing else: the client kept the channel for good.
- A refused subscribe changes no membership: one the application made (join_group, which
  never asks the hook) or one a resumed session kept stays until the client unsubscribes
  (the shipped clients do when a subscribe they send again is refused: see
  test_client_resubscribe.py). A server rule that ended such a membership on a refusal
  also undid the application's own joins.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from tests.integration.test_emitter import until
from tests.integration.test_hostile_text import call, chat_server, next_frame

ECHO = json.dumps({"type": "rpc", "id": 9, "method": "echo", "params": "sync"})
ECHOED = {"type": "reply", "id": 9, "result": "sync"}


def with_history(config: WebSocketConfig) -> WebSocketConfig:
    return config.replace(history_size=50, history_ttl=60.0, session_ttl=60.0)


async def away(ws: ClientConnection, manager: WebSocketConnectionManager,
               client_id: str) -> None:
    """End the socket without a close frame (the session stays resumable) and wait until
    the server saw it go."""
    ws.transport.abort()

    async def gone() -> bool:
        return not manager.is_connected(client_id)

    await until(gone)


async def subscribe(ws: ClientConnection, ident: int, channel: str) -> dict[str, Any]:
    return await call(ws, json.dumps({"type": "subscribe", "id": ident, "channel": channel}))


def unsubscribed(channel: str) -> dict[str, Any]:
    return {"type": "unsubscribed", "channel": channel, "reason": "server"}


async def opened(url: str, device: str, **fields: Any) -> tuple[
        ClientConnection, list[dict[str, Any]]]:
    """A v2 socket: with a reconnect token, the frames up to the resume frame; else the
    session frame."""
    ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connect", "device": device, **fields}))
    frames = [await next_frame(ws)]
    assert frames[0]["type"] == "session"
    while "reconnect_token" in fields and frames[-1]["type"] != "resume":
        frames.append(await next_frame(ws))
    return ws, frames


async def test_a_leave_while_away_is_told_when_the_client_resumes(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(with_history(config), monkeypatch) as (url, manager, _):
        ws, (session,) = await opened(url, "alice")
        for ident, channel in enumerate(("room", "quiet", "kept"), 1):
            assert (await subscribe(ws, ident, channel))["result"] == {"channel": channel}
        await manager.send_to_group("room", "m1")
        m1 = await next_frame(ws)
        assert (m1["stream"], m1["data"]) == ("g:room", "m1")
        await away(ws, manager, "alice")
        await manager.leave_group("alice", "room")   # held through its position
        await manager.leave_group("alice", "quiet")  # held as the client says
        ws, frames = await opened(
            url, "alice", reconnect_token=session["token"],
            positions={"g:room": [m1["offset"], m1["epoch"]]}, channels=["quiet", "kept"])
        assert frames[0]["resumed"] is True
        assert frames[1:-1] == [unsubscribed("quiet"), unsubscribed("room")]
        assert frames[-1]["recovered"] is True
        assert await call(ws, ECHO) == ECHOED  # nothing else came, no message of them
        await manager.send_to_group("kept", "still")
        assert (await next_frame(ws))["data"] == "still"
        assert await manager.get_client_groups("alice") == ["kept"]
        await ws.close()


@pytest.mark.redis
async def test_a_leave_from_another_node_while_away_is_told_on_resume(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: the leave runs on a node that never held the client, whose
    envelope goes to a holder that is gone; an old client names no channels (its position
    says it held the room)."""
    settings: dict[str, Any] = {"redis_url": redis_url, "namespace": namespace,
                                "heartbeat_interval": 60, "heartbeat_timeout": 120}
    config = with_history(WebSocketConfig(node_id="node-a", **settings))
    other = WebSocketConnectionManager(with_history(WebSocketConfig(node_id="node-b",
                                                                    **settings)))
    async with chat_server(config, monkeypatch) as (url, manager, _), other:
        ws, (session,) = await opened(url, "alice")
        assert (await subscribe(ws, 1, "room"))["result"] == {"channel": "room"}
        await other.send_to_group("room", "m1")
        m1 = await next_frame(ws)
        await away(ws, manager, "alice")
        await other.leave_group("alice", "room")
        ws, frames = await opened(url, "alice", reconnect_token=session["token"],
                                  positions={"g:room": [m1["offset"], m1["epoch"]]})
        assert frames[1:] == [unsubscribed("room"),
                              {"type": "resume", "recovered": True, "replayed": 0,
                               "failed": []}]
        assert await call(ws, ECHO) == ECHOED
        await ws.close()


async def test_a_channel_still_held_or_never_held_is_not_told(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(with_history(config), monkeypatch) as (url, manager, _):
        ws, (session,) = await opened(url, "bob")
        assert (await subscribe(ws, 1, "room"))["result"] == {"channel": "room"}
        await away(ws, manager, "bob")
        ws, frames = await opened(url, "bob", reconnect_token=session["token"],
                                  channels=["room"])
        assert [frame["type"] for frame in frames] == ["session", "resume"]
        await manager.leave_group("bob", "room")  # told live, as before
        assert await next_frame(ws) == unsubscribed("room")
        await ws.close()


async def test_channels_the_connect_frame_cannot_name_are_refused(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(with_history(config), monkeypatch) as (url, _, _):
        for bad in ("room", [""], [1], ["x"] * 1001):
            ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connect", "device": "eve",
                                      "reconnect_token": "s1.x", "channels": bad}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008
            assert "channels" in closed.value.rcvd.reason


async def test_a_refused_subscribe_leaves_the_applications_join_in_place(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application joins the client to a channel its hook does not let clients
    subscribe to; the client asks for it too (say, to route its messages to a callback).
    Before, the refusal ended the application's membership."""
    def verdict(request: SubscribeRequest) -> bool:
        return request.channel.startswith("room:")

    async with chat_server(config, monkeypatch, verdict) as (url, manager, _):
        ws, _frames = await opened(url, "alice")
        await manager.join_group("alice", "ops:alerts")
        reply = await subscribe(ws, 1, "ops:alerts")  # the reply alone: no unsubscribed
        assert (reply["type"], reply["error"]["code"]) == ("reply", "forbidden")
        assert await manager.get_client_groups("alice") == ["ops:alerts"]
        await manager.send_to_group("ops:alerts", "still in")
        assert (await next_frame(ws))["data"] == "still in"
        await ws.close()


async def test_a_join_made_while_the_hook_decides_outlives_its_refusal(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client was not a member when it asked; the application joins it while the hook
    decides, and the hook refuses. Before, the refusal undid the application's join."""
    asked, decide = asyncio.Event(), asyncio.Event()

    async def verdict(request: SubscribeRequest) -> bool:
        asked.set()
        await decide.wait()
        return False

    async with chat_server(config, monkeypatch, verdict) as (url, manager, _):
        ws, _frames = await opened(url, "bob")
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": "vip"}))
        await asyncio.wait_for(asked.wait(), 5)
        await manager.join_group("bob", "vip")  # the application's: no hook asked
        decide.set()
        reply = await next_frame(ws)
        assert (reply["type"], reply["error"]["code"]) == ("reply", "forbidden")
        assert await manager.get_client_groups("bob") == ["vip"]
        await ws.close()


async def test_a_refused_subscribe_after_a_resume_leaves_the_kept_membership_to_the_client(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped clients ask again, after a resume that kept the session, for each
    channel that follows presence; the hook now refuses. The reply says so and nothing
    else changes: the client's unsubscribe (the shipped clients send one) ends the
    membership and its presence entry. Before, the refusal ended it itself, with an
    unsubscribed frame, which also ended memberships the application had made."""
    refused: set[str] = set()

    def verdict(request: SubscribeRequest) -> dict[str, Any] | bool:
        return False if request.channel in refused else {"name": request.client_id}

    async with chat_server(with_history(config), monkeypatch, verdict) as (url, manager, _):
        ws, (session,) = await opened(url, "dave")
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": "room",
                                  "presence": True}))
        assert (await next_frame(ws))["result"] == {"channel": "room"}
        assert (await next_frame(ws))["type"] == "presence_state"
        await away(ws, manager, "dave")
        refused.add("room")
        ws, frames = await opened(url, "dave", reconnect_token=session["token"],
                                  channels=["room"])
        assert frames[-1]["recovered"] is True
        await ws.send(json.dumps({"type": "subscribe", "id": 2, "channel": "room",
                                  "presence": True}))
        reply = await next_frame(ws)
        assert (reply["type"], reply["error"]["code"]) == ("reply", "forbidden")
        assert await manager.get_group_members("room") == ["dave"]
        left = await call(ws, json.dumps({"type": "unsubscribe", "id": 3, "channel": "room"}))
        assert left == {"type": "reply", "id": 3, "result": {"channel": "room"}}
        assert await manager.get_group_members("room") == []
        assert await manager.get_presence("room") == {}
        await ws.close()
