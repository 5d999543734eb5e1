"""What a v2 client (or the application) sends that no frame could carry on: a lone
surrogate escape, NaN. Over real sockets (uvicorn in the test's loop, `websockets`
clients), on the in-process backend and on Redis: the sender hears why, and no other
connection is touched. Before, one publish holding "\\ud800" closed every member of its
channel with 1011 (the shared frame failed at each socket's write)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from stabilizer import (
    PublishRequest,
    RPCCall,
    RPCError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.fastapi import lifespan, session
from tests.support.inproc_uvicorn import served

LONE = "\ud800"
Verdict = Callable[[SubscribeRequest], Any]


def _app(manager: WebSocketConnectionManager, relayed: list[str],
         verdict: Verdict | None = None) -> FastAPI:
    """A chat: every message a client sends is broadcast to everyone."""
    app = FastAPI(lifespan=lifespan(manager))

    @app.websocket("/ws")
    async def chat(websocket: WebSocket) -> None:
        async with session(manager, websocket) as client:
            async for message in client:
                assert isinstance(message, str)
                relayed.append(message)
                await manager.broadcast(message)

    async def allow(request: SubscribeRequest) -> Any:
        if verdict is None:
            return True
        answer = verdict(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def publish(request: PublishRequest) -> Any:
        return request.data

    async def echo(call: RPCCall) -> Any:
        if call.params == "lone":
            return {"name": LONE}
        if call.params == "refuse":
            raise RPCError("nope", f"no {LONE} here", {"why": LONE})
        return call.params

    manager.on_subscribe(allow)
    manager.on_publish(publish)
    manager.rpc("echo")(echo)
    return app


@asynccontextmanager
async def chat_server(config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch,
                      verdict: Verdict | None = None,
                      ) -> AsyncIterator[tuple[str, WebSocketConnectionManager, list[str]]]:
    manager = WebSocketConnectionManager(config)
    relayed: list[str] = []
    async with served(_app(manager, relayed, verdict), "websockets-sansio",
                      monkeypatch) as server:
        yield f"ws://127.0.0.1:{server.port}/ws", manager, relayed


async def v2_client(url: str, device: str) -> ClientConnection:
    ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connect", "device": device}))
    assert (await next_frame(ws))["type"] == "session"
    return ws


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    """The next frame that is not a heartbeat ping."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame.get("type") != "ping":
            return frame  # type: ignore[no-any-return]


async def call(ws: ClientConnection, frame: str) -> dict[str, Any]:
    await ws.send(frame)
    return await next_frame(ws)


async def subscribed(url: str, device: str, channel: str) -> ClientConnection:
    ws = await v2_client(url, device)
    reply = await call(ws, json.dumps({"type": "subscribe", "id": 1, "channel": channel}))
    assert reply == {"type": "reply", "id": 1, "result": {"channel": channel}}
    return ws


BAD_PUBLISHES = [
    '{"type":"publish","id":7,"channel":"room","data":"hi \\ud800"}',
    '{"type":"publish","id":7,"channel":"room","data":{"\\udcff":1}}',
    '{"type":"publish","id":7,"channel":"room","data":{"x":NaN}}',
]


@pytest.mark.parametrize("frame", BAD_PUBLISHES)
async def test_a_publish_no_frame_can_carry_is_refused_and_no_member_is_touched(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch, frame: str,
        caplog: pytest.LogCaptureFixture) -> None:
    async with chat_server(config, monkeypatch) as (url, _manager, _relayed):
        members = [await subscribed(url, f"m{i}", "room") for i in range(2)]
        attacker = await v2_client(url, "attacker")
        refused = await call(attacker, frame)
        assert (refused["type"], refused["code"]) == ("error", "bad_frame")
        # the attacker's connection and every member's stay open: the next publish is
        # answered, and reaches both members
        ok = await call(attacker, '{"type":"publish","id":8,"channel":"room","data":"ok"}')
        assert ok == {"type": "reply", "id": 8, "result": {"channel": "room"}}
        for ws in members:
            assert (await next_frame(ws))["data"] == "ok"
        for ws in (*members, attacker):
            await ws.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_relayed_message_no_frame_can_carry_never_reaches_the_application(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled chat's pattern: what a client sends is broadcast. A v2 `message` frame's
    JSON escape let through text that killed every recipient's socket."""
    async with chat_server(config, monkeypatch) as (url, _manager, relayed):
        ann, eve = await v2_client(url, "ann"), await v2_client(url, "eve")
        refused = await call(eve, '{"type":"message","data":"hello \\ud800"}')
        assert (refused["type"], refused["code"]) == ("error", "bad_frame")
        await eve.send('{"type":"message","data":"hello"}')
        assert (await next_frame(ann))["data"] == "hello"
        assert relayed == ["hello"]
        await ann.close()
        await eve.close()


async def test_an_application_broadcast_no_frame_can_carry_raises_to_its_caller(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(config, monkeypatch) as (url, manager, _relayed):
        ann = await v2_client(url, "ann")
        for message in (f"x{LONE}", {"x": LONE}):
            with pytest.raises(TypeError, match="lone surrogate"):
                await manager.broadcast(message)
            with pytest.raises(TypeError, match="lone surrogate"):
                await manager.send_to_client("ann", message)
        await manager.broadcast("still here")
        assert (await next_frame(ann))["data"] == "still here"
        await ann.close()


async def test_replies_the_application_makes_of_such_text_keep_the_caller_connected(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(config, monkeypatch) as (url, _manager, _relayed):
        ws = await v2_client(url, "caller")
        bad = await call(ws, '{"type":"rpc","id":1,"method":"echo","params":"lone"}')
        assert bad == {"type": "reply", "id": 1,
                       "error": {"code": "internal", "message": "internal error"}}
        refused = await call(ws, '{"type":"rpc","id":2,"method":"echo","params":"refuse"}')
        assert refused["error"]["code"] == "nope"
        assert refused["error"]["message"] == f"no {LONE} here"  # escaped on the wire
        ok = await call(ws, '{"type":"rpc","id":3,"method":"echo","params":"é"}')
        assert ok == {"type": "reply", "id": 3, "result": "é"}
        await ws.close()


@pytest.mark.parametrize("verdict", [0, "", [], "yes", 1])
async def test_a_subscribe_verdict_that_is_no_verdict_refuses(
        monkeypatch: pytest.MonkeyPatch, verdict: object,
        caplog: pytest.LogCaptureFixture) -> None:
    """None (or True) allows, False refuses, a dict allows with metadata: a falsy slip such
    as `return user_id and ...` for an anonymous client must not let it in."""
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120)
    async with chat_server(config, monkeypatch, lambda _request: verdict) as (url, manager, _):
        ws = await v2_client(url, "anon")
        reply = await call(ws, '{"type":"subscribe","id":1,"channel":"user:alice"}')
        assert reply["error"]["code"] == "internal"
        assert manager.get_connection("anon").groups == frozenset()  # type: ignore[union-attr]
        await ws.close()
    assert any("no verdict" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("verdict", [None, True, {}])
async def test_the_documented_verdicts_allow(monkeypatch: pytest.MonkeyPatch,
                                             verdict: object) -> None:
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120)
    async with chat_server(config, monkeypatch, lambda _request: verdict) as (url, manager, _):
        ws = await subscribed(url, "anon", "room")
        assert manager.get_connection("anon").groups == {"room"}  # type: ignore[union-attr]
        await ws.close()



async def test_a_client_subscribes_to_at_most_max_channels_per_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each channel costs the node a membership and a pub/sub subscription: a client
    cannot make them without end (3,000 went through before)."""
    config = WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120,
                             max_channels_per_connection=2)
    async with chat_server(config, monkeypatch) as (url, manager, _relayed):
        ws = await v2_client(url, "greedy")
        for ident, channel in enumerate(("a", "b"), start=1):
            reply = await call(ws, json.dumps({"type": "subscribe", "id": ident,
                                               "channel": channel}))
            assert reply["result"] == {"channel": channel}
        over = await call(ws, '{"type":"subscribe","id":3,"channel":"c"}')
        assert over["error"]["code"] == "limit_exceeded"
        again = await call(ws, '{"type":"subscribe","id":4,"channel":"a"}')  # one it holds
        assert again["result"] == {"channel": "a"}
        left = await call(ws, '{"type":"unsubscribe","id":5,"channel":"b"}')
        assert left["result"] == {"channel": "b"}
        now = await call(ws, '{"type":"subscribe","id":6,"channel":"c"}')
        assert now["result"] == {"channel": "c"}
        await manager.join_group("greedy", "d")  # the application's joins are not refused
        assert manager.get_connection("greedy").groups == {"a", "c", "d"}  # type: ignore[union-attr]
        await ws.close()
