"""A request's reply is read although the Python client's inbox is full.

The client reads its socket in one loop and puts application messages into a bounded
inbox (max_inbox_messages); a full inbox made that loop wait. A reply that came behind
more messages than the inbox holds was then never read: an rpc made while the
application was not taking messages (typically from its own message loop) timed out
although the server had answered, and a socket that closed meanwhile went unnoticed. Both
tests fail on that code. While a request waits for its reply, the reader now keeps
reading (client/inbox.py), and the messages stay in order for recv().
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI

from stabilizer import RPCCall, RPCError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import RetryPolicy, connect
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

INBOX = 2
AHEAD = 5  # messages the server sends before a reply: more than the inbox holds


def notifying_app(manager: WebSocketConnectionManager, asked: asyncio.Event) -> FastAPI:
    """`notify` sends its caller AHEAD messages, then returns; `stall` sends them, says so
    and never returns."""
    app = session_app(manager)

    @manager.rpc("notify")
    async def notify(call: RPCCall) -> str:
        for n in range(AHEAD):
            assert await manager.send_to_client(call.client_id, f"n{n}")
        return "done"  # the reply goes out after the messages, on the same socket

    @manager.rpc("stall")
    async def stall(call: RPCCall) -> None:
        for n in range(AHEAD):
            assert await manager.send_to_client(call.client_id, f"n{n}")
        asked.set()
        await asyncio.Event().wait()  # cancelled when its socket closes

    return app


def quiet_manager() -> WebSocketConnectionManager:
    return WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=60,
                                                      heartbeat_timeout=120))


async def test_a_reply_behind_a_full_inbox_reaches_the_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = quiet_manager()
    async with (
        served(notifying_app(manager, asyncio.Event()), "websockets-sansio",
               monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                max_inbox_messages=INBOX) as client,
    ):
        # nothing takes messages while the call waits, as in a message loop that calls
        assert await client.rpc("notify", timeout=5) == "done"
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in range(AHEAD)]
        assert got == [f"n{n}" for n in range(AHEAD)]  # none lost, in order
        assert await client.rpc("notify", timeout=5) == "done"  # and again


async def test_a_call_whose_socket_closes_behind_a_full_inbox_is_disconnected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = quiet_manager()
    asked = asyncio.Event()
    async with (
        served(notifying_app(manager, asked), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, max_inbox_messages=INBOX,
                retry=RetryPolicy(base=0.01, cap=0.05)) as client,
    ):
        calling = asyncio.create_task(client.rpc("stall", timeout=30))
        await asyncio.wait_for(asked.wait(), 5)
        client_id = client.client_id
        assert client_id is not None
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
        with pytest.raises(RPCError) as lost:
            async with asyncio.timeout(5):  # well before the call's own 30 s
                await calling
        assert lost.value.code == "disconnected"
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in range(AHEAD)]
        assert got == [f"n{n}" for n in range(AHEAD)]  # what came before the close stays
