"""A procedure or hook that ends with a CancelledError of its own (it awaited something
that something else cancelled: a shared task, a library's inner timeout) fails like any
other exception: the client gets the reply `internal`, the log the traceback. Only the
request's own cancellation (its client gone, the node stopping) ends it without a reply.
Before, both `guarded` and the session caught Exception only: such a call got no reply at
all and left no log line, against docs/protocol.md 6.5 (one reply per call)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from stabilizer import (
    PublishRequest,
    RPCCall,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.integration.test_hostile_text import next_frame, v2_client
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


async def cancelled_elsewhere() -> None:
    """Await a task that something else cancels: its CancelledError reaches the caller,
    whose own task was never cancelled."""
    shared = asyncio.create_task(asyncio.Event().wait())
    asyncio.get_running_loop().call_soon(shared.cancel)
    await shared


class Held:
    """A procedure that waits until its call is cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, call: RPCCall) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def _app(manager: WebSocketConnectionManager, held: Held) -> FastAPI:
    app = session_app(manager)

    async def inner_cancel(call: RPCCall) -> Any:
        await cancelled_elsewhere()
        return "unreachable"

    async def echo(call: RPCCall) -> Any:
        return call.params

    async def allow(request: SubscribeRequest) -> bool:
        if request.channel == "cancelled":
            await cancelled_elsewhere()
        return True

    async def publish(request: PublishRequest) -> Any:
        if request.channel == "cancelled":
            await cancelled_elsewhere()
        return request.data

    manager.rpc("inner_cancel")(inner_cancel)
    manager.rpc("echo")(echo)
    manager.rpc("hold")(held)
    manager.on_subscribe(allow)
    manager.on_publish(publish)
    return app


@asynccontextmanager
async def server(monkeypatch: pytest.MonkeyPatch,
                 ) -> AsyncIterator[tuple[str, WebSocketConnectionManager, Held]]:
    manager = WebSocketConnectionManager(
        WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120))
    held = Held()
    async with served(_app(manager, held), "websockets-sansio", monkeypatch) as served_on:
        yield f"ws://127.0.0.1:{served_on.port}/ws", manager, held


INTERNAL = {"code": "internal", "message": "internal error"}


@pytest.mark.parametrize("frame", [
    {"type": "rpc", "id": 1, "method": "inner_cancel"},
    {"type": "subscribe", "id": 1, "channel": "cancelled"},
    {"type": "publish", "id": 1, "channel": "cancelled", "data": "hi"},
], ids=["rpc", "on_subscribe", "on_publish"])
async def test_a_cancelled_error_of_the_applications_code_is_answered_internal(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        frame: dict[str, Any]) -> None:
    async with server(monkeypatch) as (url, manager, _held):
        ws = await v2_client(url, "tab")
        await ws.send(json.dumps(frame))
        assert await next_frame(ws) == {"type": "reply", "id": 1, "error": INTERNAL}
        # the connection goes on, and the channel was not joined
        await ws.send(json.dumps({"type": "rpc", "id": 2, "method": "echo", "params": "on"}))
        assert await next_frame(ws) == {"type": "reply", "id": 2, "result": "on"}
        assert await manager.get_client_groups("tab") == []
        await ws.close()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is asyncio.CancelledError


async def test_a_call_whose_client_left_is_still_cancelled_without_a_reply(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with server(monkeypatch) as (url, manager, held):
        ws = await v2_client(url, "gone")
        await ws.send(json.dumps({"type": "rpc", "id": 1, "method": "hold"}))
        await asyncio.wait_for(held.started.wait(), 5)
        await ws.close()
        await asyncio.wait_for(held.cancelled.wait(), 5)
        assert manager.stats.rpc_failures == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
