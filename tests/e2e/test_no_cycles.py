"""A closed connection is freed by reference counting alone, under each of uvicorn's
WebSocket implementations.

A reference cycle anywhere in a session's objects keeps the whole connection (uvicorn's
protocol, the Starlette socket, the task and its frames) alive until Python's cyclic
collector runs, and every full collection walks all of them. With the collector turned off
here, a session's objects must go as soon as its endpoint returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect as ws_connect

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.auth import JWTAuthenticator
from stabilizer.fastapi import lifespan, session
from tests.support.inproc_uvicorn import IMPLS, served

pytestmark = pytest.mark.e2e

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
SECRET = "no-cycles-test-secret-" + "k" * 24


class Kept:
    """Weak references to each session's objects, an event per finished endpoint, and one
    set when every object kept is gone (a weak reference's callback runs as it goes)."""

    def __init__(self) -> None:
        self.refs: list[tuple[str, weakref.ref[Any]]] = []
        self.ended = asyncio.Queue[str]()
        self.all_gone = asyncio.Event()

    def keep(self, name: str, thing: object) -> None:
        self.refs.append((name, weakref.ref(thing, self._gone)))

    def _gone(self, _: weakref.ref[Any]) -> None:
        if not self.alive():
            self.all_gone.set()

    def alive(self) -> list[str]:
        return [name for name, ref in self.refs if ref() is not None]


def make_app(manager: WebSocketConnectionManager, kept: Kept) -> FastAPI:
    app = FastAPI(lifespan=lifespan(manager))

    @manager.rpc("add")
    async def add(call: Any) -> Any:
        return call.params["a"] + call.params["b"]

    async def serve(websocket: WebSocket, client_id: str | None) -> None:
        try:
            async with session(manager, websocket, client_id) as conn:
                assert conn.conn is not None
                kept.keep("session", conn)
                kept.keep("connection", conn.conn)
                kept.keep("websocket", websocket)
                if client_id is not None:
                    await manager.join_group(client_id, "room")
                async for _message in conn:
                    pass
        finally:
            kept.ended.put_nowait(client_id or "v2")

    @app.websocket("/ws/{client_id}")
    async def plain(websocket: WebSocket, client_id: str) -> None:
        await serve(websocket, client_id)

    @app.websocket("/v2")
    async def v2(websocket: WebSocket) -> None:
        await serve(websocket, None)

    return app


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def freed(kept: Kept, ended: int) -> list[str]:
    """Wait until `ended` endpoints returned and their objects went; what is still alive."""
    async with asyncio.timeout(BOUND):
        for _ in range(ended):
            await kept.ended.get()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BOUND):  # uvicorn lets go of its task after a turn or two
            await kept.all_gone.wait()
    return kept.alive()


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_closed_session_leaves_nothing_for_the_cyclic_collector(
        ws: str, backend: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        namespace: str) -> None:
    options: dict[str, Any] = dict(QUIET)
    if backend == "redis":  # history on: the welcome token, sessions and group streams
        options |= {"redis_url": request.getfixturevalue("redis_url"),
                    "namespace": namespace, "history_size": 10}
    manager = WebSocketConnectionManager(WebSocketConfig(**options))
    kept = Kept()
    async with served(make_app(manager, kept), ws, monkeypatch) as server:
        base = f"ws://127.0.0.1:{server.port}"
        with collector_off():
            for index in range(3):
                async with ws_connect(f"{base}/ws/c{index}") as plain:
                    assert json.loads(await plain.recv())["type"] == "session"
                    await plain.send("hello")
            async with ws_connect(f"{base}/v2", subprotocols=["stabilizer.v2"]) as v2:
                await v2.send(json.dumps({"type": "connect"}))
                assert json.loads(await v2.recv())["type"] == "session"
                await v2.send(json.dumps({"type": "rpc", "id": 1, "method": "add",
                                          "params": {"a": 1, "b": 2}}))
                assert json.loads(await v2.recv())["result"] == 3
            assert len(kept.refs) == 12
            assert await freed(kept, 4) == []


@pytest.mark.parametrize("ws", IMPLS)
async def test_an_authenticated_session_leaves_nothing_for_the_cyclic_collector(
        ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a user's identity: its expiry is watched, and a refresh re-arms the watch
    authenticator = JWTAuthenticator(secret=SECRET)
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET), authenticator=authenticator)
    kept = Kept()
    async with served(make_app(manager, kept), ws, monkeypatch) as server:
        with collector_off():
            for device in ("phone", "laptop"):
                async with ws_connect(f"ws://127.0.0.1:{server.port}/v2",
                                      subprotocols=["stabilizer.v2"]) as v2:
                    await v2.send(json.dumps({"type": "connect", "device": device,
                                              "token": authenticator.issue("ann", ttl=600)}))
                    assert json.loads(await v2.recv())["type"] == "session"
                    await v2.send(json.dumps({"type": "refresh", "token":
                                              authenticator.issue("ann", ttl=900)}))
                    assert json.loads(await v2.recv())["type"] == "refreshed"
            assert len(kept.refs) == 6
            assert await freed(kept, 2) == []
