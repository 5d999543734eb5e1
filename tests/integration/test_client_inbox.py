"""The Python client reads its socket whatever the application does, and its inbox stays
bounded (max_inbox_messages).

The client put application messages into a bounded inbox from the loop that reads the
socket, and a full inbox made that loop wait: a server's ping went unanswered (the server
cut the client off as dead, 4000), a close went unseen (the client stayed OPEN on a dead
socket until the application read), and a request's reply behind the messages was never
read. The fix of the last one read on past the bound while a request waited, so the inbox
grew without limit. Now the reader never waits (client/inbox.py): a message that finds the
inbox full is turned away with every later one of that socket, and once the application
took a message the client closes that socket (1013) and resumes after the last message
the inbox kept: with history the server replays the rest, without it on_resume says that
messages were lost. Every test fails on the code before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from stabilizer import RPCCall, RPCError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import (
    ClientConnection,
    ConnectionState,
    ControlFrame,
    ResumeResult,
    RetryPolicy,
    StateChange,
    connect,
)
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

INBOX = 2
AHEAD = 5  # messages the server sends before a reply: more than the inbox holds
QUIET = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
FAST_RETRY = RetryPolicy(base=0.01, cap=0.05)


def notifying_app(manager: WebSocketConnectionManager, asked: asyncio.Event) -> FastAPI:
    """`notify` sends its caller AHEAD messages, then returns; `stall` sends them, says so
    and never returns."""
    app = session_app(manager)

    @manager.rpc("notify")
    async def notify(call: RPCCall) -> str:
        await flood(manager, call.client_id)
        return "done"  # the reply goes out after the messages, on the same socket

    @manager.rpc("stall")
    async def stall(call: RPCCall) -> None:
        await flood(manager, call.client_id)
        asked.set()
        await asyncio.Event().wait()  # cancelled when its socket closes

    return app


@asynccontextmanager
async def notified_client(manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch,
                          *, watch: Watch | None = None,
                          asked: asyncio.Event | None = None) -> AsyncIterator[ClientConnection]:
    """A v2 client (inbox of INBOX, FAST_RETRY, reporting to `watch`) of `manager` serving
    notifying_app (which sets `asked` when `stall` has sent its messages)."""
    app = notifying_app(manager, asyncio.Event() if asked is None else asked)
    options: dict[str, Any] = {} if watch is None else watch.options()
    async with (
        served(app, "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, max_inbox_messages=INBOX,
                retry=FAST_RETRY, **options) as client,
    ):
        yield client


async def flood(manager: WebSocketConnectionManager, client_id: str) -> None:
    for n in range(AHEAD):
        assert await manager.send_to_client(client_id, f"n{n}")


def held(client: ClientConnection) -> int:
    """How many messages the client's inbox holds."""
    return len(client._inbox._messages)


class Watch:
    """The client's state changes, resume results and pings, as they come."""

    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.resumes: list[ResumeResult] = []
        self.pings = 0
        self.changed = asyncio.Event()

    def options(self) -> dict[str, Any]:
        return {"on_state": self.on_state, "on_resume": self.on_resume,
                "on_control": self.on_control}

    def on_state(self, change: StateChange) -> None:
        self.states.append(change)
        self.changed.set()

    def on_resume(self, result: ResumeResult) -> None:
        self.resumes.append(result)
        self.changed.set()

    def on_control(self, frame: ControlFrame) -> None:
        if frame.get("type") == "ping":
            self.pings += 1
            self.changed.set()

    async def until(self, check: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def test_a_reply_behind_a_full_inbox_arrives_and_the_inbox_stays_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # without history the messages come before the reply, on the same socket
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    watch = Watch()
    async with notified_client(manager, monkeypatch, watch=watch) as client:
        # nothing takes messages while the call waits, as in a message loop that calls
        assert await client.rpc("notify", timeout=5) == "done"
        assert held(client) == INBOX  # the rest was turned away, not kept past the bound
        assert client.state is ConnectionState.OPEN  # (until the application takes one)
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in range(INBOX)]
        assert got == [f"n{n}" for n in range(INBOX)]  # what the inbox kept, in order
        # having taken one, the client replaced the socket; the rest is reported lost
        await watch.until(lambda: len(watch.resumes) == 1)
        assert not watch.resumes[0].recovered  # the application must resync
        await watch.until(lambda: client.state is ConnectionState.OPEN)
        assert [(c.state, c.close_code) for c in watch.states][2:] == [
            (ConnectionState.RECONNECTING, 1013), (ConnectionState.OPEN, None)]
        client_id = client.client_id
        assert client_id is not None
        assert await manager.send_to_client(client_id, "after")
        async with asyncio.timeout(5):
            assert await client.recv() == "after"  # the new socket delivers again
        assert await client.rpc("notify", timeout=5) == "done"  # and again
        assert held(client) == INBOX


async def test_with_history_the_resume_replays_what_a_full_inbox_turned_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **HISTORY))
    watch = Watch()
    async with notified_client(manager, monkeypatch, watch=watch) as client:
        assert await client.rpc("notify", timeout=5) == "done"
        await until_behind(client)
        assert held(client) == INBOX
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in range(AHEAD)]
        assert got == [f"n{n}" for n in range(AHEAD)]  # none lost, in order
        # (a replay can fill the inbox again: then the client resumes once more)
        assert watch.resumes
        assert all(r.recovered for r in watch.resumes)
        assert [(c.state, c.close_code) for c in watch.states][2:] == len(watch.resumes) * [
            (ConnectionState.RECONNECTING, 1013), (ConnectionState.OPEN, None)]


async def until_behind(client: ClientConnection) -> None:
    """Wait until a full inbox turned a message of the current socket away."""
    async with asyncio.timeout(5):
        await client._inbox._behind.wait()


async def test_a_call_whose_socket_closes_behind_a_full_inbox_is_disconnected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **HISTORY))
    asked = asyncio.Event()
    async with notified_client(manager, monkeypatch, asked=asked) as client:
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
        assert got == [f"n{n}" for n in range(AHEAD)]  # kept, then replayed, in order
        assert held(client) == 0


@pytest.mark.parametrize("protocol", [1, 2])
async def test_pings_are_answered_while_the_application_takes_no_messages(
        monkeypatch: pytest.MonkeyPatch, protocol: int) -> None:
    # the server cuts off a client that leaves a ping unanswered for heartbeat_timeout
    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=0.1,
                                                         heartbeat_timeout=0.3))
    watch = Watch()
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=protocol,
                max_inbox_messages=INBOX, **watch.options()) as client,
    ):
        client_id = client.client_id
        assert client_id is not None
        await flood(manager, client_id)  # the application never takes them
        pings = watch.pings
        await watch.until(lambda: watch.pings >= pings + 10)  # ten pings, ~1 s, answered
        assert [c.state for c in watch.states] == [ConnectionState.CONNECTING,
                                                   ConnectionState.OPEN]  # never cut off
        assert manager.is_connected(client_id)
        assert held(client) == INBOX


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_close_is_seen_while_the_application_takes_no_messages(
        monkeypatch: pytest.MonkeyPatch, protocol: int) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    watch = Watch()
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=protocol,
                max_inbox_messages=INBOX, retry=FAST_RETRY, **watch.options()) as client,
    ):
        client_id = client.client_id
        assert client_id is not None
        await flood(manager, client_id)  # the application never takes them
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
        # the state follows the socket without a recv()
        await watch.until(lambda: any(c.close_code == 1012 for c in watch.states))
        await watch.until(lambda: client.state is ConnectionState.OPEN)
        assert [c.state for c in watch.states][2:] == [ConnectionState.RECONNECTING,
                                                       ConnectionState.OPEN]
        async with asyncio.timeout(5):
            got = [await client.recv() for _ in range(INBOX)]
        assert got == [f"n{n}" for n in range(INBOX)]  # what the inbox held stays


async def test_a_burst_over_the_inbox_arrives_with_few_prompt_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An application slower than a burst once took 31.7 s for 400 messages (inbox 50): a
    resume counted as a failed connection and backed off up to RetryPolicy.cap, and it
    came after one message taken, so each let in about one. Now the client resumes at once,
    once the application drained the inbox to half: each resume admits half an inbox."""
    limit, burst = 10, 60
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **HISTORY))
    watch = Watch()
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, max_inbox_messages=limit,
                retry=RetryPolicy(base=0.01, cap=0.05), **watch.options()) as client,
    ):
        client_id = client.client_id
        assert client_id is not None
        for n in range(burst):
            assert await manager.send_to_client(client_id, f"m{n}")
        await until_behind(client)
        got: list[str | bytes] = []
        async with asyncio.timeout(30):
            while len(got) < burst:
                got.append(await client.recv())
                # an application slower than the network: it takes nothing while resuming
                await watch.until(lambda: client.state is ConnectionState.OPEN)
    assert got == [f"m{n}" for n in range(burst)]  # all of them, in order, once each
    sheds = [c for c in watch.states if c.state is ConnectionState.RECONNECTING]
    assert sheds
    assert all(c.close_code == 1013 for c in sheds)
    assert [c.delay for c in sheds] == [0.0] * len(sheds)  # no backoff
    assert [c.failures for c in sheds] == [0] * len(sheds)  # none counted as a failure
    # the first socket let in a full inbox, each resumed one that fell behind half of one
    assert len(sheds) <= math.ceil((burst - limit) / math.ceil(limit / 2))
    assert all(r.recovered for r in watch.resumes)
