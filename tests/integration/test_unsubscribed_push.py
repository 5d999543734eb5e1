"""A v2 client the server takes out of a channel hears it: one ``unsubscribed`` frame,
whether the leave ran on its node, on another node or in an Emitter. Its own unsubscribe
gets the reply alone, and a plain client gets nothing new. Over real sockets (uvicorn in
the test's loop, `websockets` clients), on the in-process backend and on Redis. Before, the
client was not told: it kept the channel in its book and got no more of its messages."""

from __future__ import annotations

import json

import pytest
import websockets

from stabilizer import Emitter, WebSocketConfig, WebSocketConnectionManager
from tests.integration.test_hostile_text import call, chat_server, next_frame, subscribed

UNSUBSCRIBED = {"type": "unsubscribed", "channel": "room", "reason": "server"}
ECHO = json.dumps({"type": "rpc", "id": 9, "method": "echo", "params": "sync"})
ECHOED = {"type": "reply", "id": 9, "result": "sync"}


async def test_leave_group_tells_the_v2_client_once(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(config, monkeypatch) as (url, manager, _):
        ws = await subscribed(url, "alice", "room")
        await manager.leave_group("alice", "room")
        assert await next_frame(ws) == UNSUBSCRIBED
        await manager.leave_group("alice", "room")  # not a member any more: nothing
        assert await call(ws, ECHO) == ECHOED  # (the next frame: no second unsubscribed)
        await manager.send_to_group("room", "gone")  # and no more of its messages
        assert await call(ws, ECHO) == ECHOED
        await ws.close()


async def test_the_clients_own_unsubscribe_gets_its_reply_alone(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(config, monkeypatch) as (url, _, _):
        ws = await subscribed(url, "alice", "room")
        reply = await call(ws, json.dumps({"type": "unsubscribe", "id": 2, "channel": "room"}))
        assert reply == {"type": "reply", "id": 2, "result": {"channel": "room"}}
        assert await call(ws, ECHO) == ECHOED
        await ws.close()


async def test_a_plain_client_gets_nothing_new(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (chat_server(config, monkeypatch) as (url, manager, _),
                websockets.connect(url) as ws):
        session = json.loads(await ws.recv())
        assert session["type"] == "session"
        client_id = session["client_id"]
        await manager.join_group(client_id, "room")
        await manager.leave_group(client_id, "room")
        await manager.send_to_client(client_id, "after")
        assert await ws.recv() == "after"  # the first frame after the session's


@pytest.mark.redis
async def test_a_leave_from_another_node_or_an_emitter_tells_the_client_once(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, node_id="node-a",
                             heartbeat_interval=60, heartbeat_timeout=120)
    other = WebSocketConnectionManager(WebSocketConfig(
        redis_url=redis_url, namespace=namespace, node_id="node-b", heartbeat_interval=60,
        heartbeat_timeout=120))
    emitter = Emitter(redis_url, namespace=namespace)
    async with chat_server(config, monkeypatch) as (url, _, _), other:
        ws = await subscribed(url, "alice", "room")
        await other.leave_group("alice", "room")
        assert await next_frame(ws) == UNSUBSCRIBED
        assert await call(ws, ECHO) == ECHOED
        reply = await call(ws, json.dumps({"type": "subscribe", "id": 3, "channel": "room"}))
        assert reply == {"type": "reply", "id": 3, "result": {"channel": "room"}}
        await emitter.leave_group("alice", "room")
        assert await next_frame(ws) == UNSUBSCRIBED
        assert await call(ws, ECHO) == ECHOED
        await ws.close()
    await emitter.aclose()
