"""The Python client asks again, after its backoff, for a channel whose automatic subscribe
(after a reconnect) the server answered with a code that says "try later" (`unavailable`,
`overloaded`, `rate_limited`, `timeout`). Before, it took such an answer for "nothing
changed": it kept the channel, never asked again and told no one, while the server had no
membership (or, after a kept resume, followed no presence for the new socket), so the
channel's messages were lost until a later reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from stabilizer import (
    RPCCall,
    RPCError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.client import ConnectionState, RetryPolicy, StateChange, connect
from stabilizer.session import calls as server_calls
from tests.integration.test_client_resubscribe import kept_history, resumed_after_a_restart
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

FAST = RetryPolicy(base=0.01, cap=0.05)


def no_history(**settings: Any) -> WebSocketConfig:
    return WebSocketConfig(heartbeat_interval=60, heartbeat_timeout=120, **settings)


class Hook:
    """An on_subscribe hook that allows (with presence metadata), but answers each code
    queued for a channel first, one per subscribe, in order; it counts what it is asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.codes: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}  # channel -> a code it answers every time

    def __call__(self, request: SubscribeRequest) -> dict[str, str]:
        channel = request.channel
        self.asked.append(channel)
        queued = self.codes.get(channel)
        code = queued.pop(0) if queued else self.always.get(channel)
        if code is not None:
            raise RPCError(code, "try later" if code != "forbidden" else "not any more")
        return {"name": request.client_id}


def restart(manager: WebSocketConnectionManager, client_id: str | None) -> Any:
    """Close the client's socket as a restarting server does (1012, come back at once)."""
    assert client_id is not None
    return manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')


async def test_a_subscribe_made_again_and_answered_overloaded_is_asked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: a call made while the client reconnects is sent first and
    fills rpc_max_in_flight, so the server answers the automatic subscribe `overloaded`."""
    manager = WebSocketConnectionManager(no_history(rpc_max_in_flight=1))
    manager.on_subscribe(lambda request: True)
    release, overloaded = asyncio.Event(), asyncio.Event()

    @manager.rpc("hold")
    async def hold(call: RPCCall) -> str:
        await release.wait()
        return "done"

    reply = server_calls.Calls._reply

    def spy(conn: Any, frame: str) -> None:
        if '"overloaded"' in frame:
            overloaded.set()
        reply(conn, frame)

    monkeypatch.setattr(server_calls.Calls, "_reply", staticmethod(spy))
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    ended: list[str] = []
    lost = asyncio.Event()

    def on_state(change: StateChange) -> None:
        if change.state is ConnectionState.RECONNECTING:
            lost.set()

    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, on_state=on_state,
                retry=FAST) as client,
    ):
        await client.subscribe("room", got.put_nowait, on_unsubscribed=ended.append)
        client_id = client.client_id
        await restart(manager, client_id)
        await asyncio.wait_for(lost.wait(), 5)
        held = asyncio.create_task(client.rpc("hold"))  # sent first once the socket opens
        await asyncio.wait_for(overloaded.wait(), 5)  # the automatic subscribe's answer
        release.set()
        assert await asyncio.wait_for(held, 5) == "done"

        async def member() -> bool:
            return await manager.get_group_members("room") == [client_id]

        await until(member, timeout=10)
        await manager.send_to_group("room", "after")
        assert await asyncio.wait_for(got.get(), 5) == "after"
        assert ended == []


async def test_try_later_answers_are_asked_again_until_the_hook_decides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh session: each channel is asked again after every "try later" answer; an
    allow brings its messages back, a final refusal ends it with that code."""
    manager = WebSocketConnectionManager(no_history())
    hook = Hook()
    manager.on_subscribe(hook)
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    ended: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def told(channel: str) -> Callable[[str], None]:
        return lambda reason: ended.put_nowait((channel, reason))

    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, retry=FAST) as client,
    ):
        await client.subscribe("room", got.put_nowait, on_unsubscribed=told("room"))
        await client.subscribe("stage", on_unsubscribed=told("stage"))
        client_id = client.client_id
        hook.codes = {"room": ["unavailable", "rate_limited", "overloaded"],
                      "stage": ["timeout", "forbidden"]}
        await restart(manager, client_id)
        assert await asyncio.wait_for(ended.get(), 10) == ("stage", "forbidden")

        async def member() -> bool:
            return await manager.get_group_members("room") == [client_id]

        await until(member, timeout=10)
        assert (hook.asked.count("room"), hook.asked.count("stage")) == (5, 3)
        assert await manager.get_group_members("stage") == []
        await manager.send_to_group("room", "after")
        assert await asyncio.wait_for(got.get(), 5) == "after"
        assert ended.empty()


async def test_a_presence_resync_answered_unavailable_after_a_kept_resume_is_asked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The session kept the membership, but the server follows presence per socket: the
    re-sync answered `unavailable` is asked again, so the copy hears of later joins."""
    manager = WebSocketConnectionManager(kept_history())
    hook = Hook()
    manager.on_subscribe(hook)
    resumed = asyncio.Event()
    url = "ws://127.0.0.1:{}/ws"
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(url.format(server.port), protocol=2, retry=FAST,
                on_resume=lambda _result: resumed.set()) as client,
    ):
        ended: list[str] = []
        await client.subscribe("stage", presence=True, on_unsubscribed=ended.append)
        hook.codes = {"stage": ["unavailable"]}
        await resumed_after_a_restart(manager, client, resumed)
        async with connect(url.format(server.port), protocol=2, device="bob") as bob:
            await bob.subscribe("stage", presence=True)
            await client.presence("stage").until(lambda presence: "bob" in presence)
        assert hook.asked.count("stage") == 4  # the subscribe, the refused, the new; bob's
        assert ended == []


async def test_try_later_answers_end_the_subscription_after_max_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded as reconnects are: after RetryPolicy.max_attempts such answers in a row the
    client gives the channel up, as after a refusal, with the last code."""
    manager = WebSocketConnectionManager(no_history())
    hook = Hook()
    manager.on_subscribe(hook)
    ended: asyncio.Queue[str] = asyncio.Queue()
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=2)) as client,
    ):
        await client.subscribe("room", on_unsubscribed=ended.put_nowait)
        hook.always = {"room": "unavailable"}
        await restart(manager, client.client_id)
        assert await asyncio.wait_for(ended.get(), 10) == "unavailable"
        assert hook.asked.count("room") == 3  # the subscribe, then two answers in a row
        assert await manager.get_group_members("room") == []


async def test_an_unsubscribe_ends_the_asking_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The application leaves a channel the client keeps asking for: the asking ends (it
    would go on for ever: the hook always says "try later")."""
    manager = WebSocketConnectionManager(no_history())
    hook = Hook()
    manager.on_subscribe(hook)
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, retry=FAST) as client,
    ):
        ended: list[str] = []
        await client.subscribe("room", on_unsubscribed=ended.append)
        hook.always = {"room": "overloaded"}
        await restart(manager, client.client_id)

        async def asked_again_twice() -> bool:
            return hook.asked.count("room") >= 3

        await until(asked_again_twice, timeout=10)
        await client.unsubscribe("room")
        asking = client._resubscriber  # (the task that asks again)
        assert asking is not None
        await asyncio.wait_for(asyncio.shield(asking), 5)
        assert ended == []
        assert await manager.get_group_members("room") == []
