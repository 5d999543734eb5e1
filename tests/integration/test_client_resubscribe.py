"""The Python client subscribes to its channels again when the server forgot its session
although its reconnect token was still good (away longer than session_ttl, or the session
ended): the resume frame says `fresh`. Before, both clients took `resumed: true` with
history for memberships kept, and the channel's messages never came again, silently."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import ClientConnection, ResumeResult, RetryPolicy, connect
from stabilizer.client.requests import Subscriptions
from stabilizer.connection.connection import Connection
from stabilizer.pure.client_protocol import ControlFrame
from stabilizer.pure.v2 import ChannelRequest
from stabilizer.services.channels import Channels
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


def history_app(manager: WebSocketConnectionManager, asked: list[str]) -> FastAPI:
    app = session_app(manager)

    async def allow(request: SubscribeRequest) -> bool:
        asked.append(request.channel)
        return True

    manager.on_subscribe(allow)
    return app


async def test_a_client_subscribes_again_when_its_session_was_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(
        history_size=50, history_ttl=60.0, session_ttl=60.0, heartbeat_interval=60,
        heartbeat_timeout=120))
    asked: list[str] = []
    got: asyncio.Queue[Any] = asyncio.Queue()
    resumes: list[ResumeResult] = []
    resumed = asyncio.Event()

    def on_resume(result: ResumeResult) -> None:
        resumes.append(result)
        resumed.set()
    async with (
        served(history_app(manager, asked), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                retry=RetryPolicy(base=0.01, cap=0.05), on_resume=on_resume) as client,
    ):
        await client.subscribe("room", got.put_nowait)
        await manager.send_to_group("room", "before")
        assert await asyncio.wait_for(got.get(), 5) == "before"
        client_id = client.client_id
        assert client_id is not None
        first = client.session
        # the session ends (as when the client stays away past session_ttl) while its
        # token is still good; the client comes back with it
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
        await manager.backend.sessions.end(client_id)
        await asyncio.wait_for(resumed.wait(), 10)  # (after the new session frame)
        assert client.session is not None
        assert client.session is not first
        assert client.session.resumed  # the token was good
        assert resumes[-1].session_resumed is False  # the resume frame: fresh

        async def subscribed_again() -> bool:  # (the server's side settles after the reply)
            return asked.count("room") >= 2 and await manager.get_group_members("room") == [
                client_id]

        await until(subscribed_again, timeout=10)
        await manager.send_to_group("room", "after")
        assert await asyncio.wait_for(got.get(), 5) == "after"


async def test_another_process_resumes_from_the_positions_it_was_handed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented hand-over: token, device and positions. Before, connect() took no
    positions, and the new process was replayed everything the first one had handled."""
    manager = WebSocketConnectionManager(WebSocketConfig(
        history_size=50, history_ttl=60.0, session_ttl=60.0, heartbeat_interval=60,
        heartbeat_timeout=120))
    url_of = "ws://127.0.0.1:{}/ws"
    async with served(history_app(manager, []), "websockets-sansio", monkeypatch) as server:
        url = url_of.format(server.port)
        first = connect(url, protocol=2, device="d1", retry=RetryPolicy(max_attempts=1))
        await first.start()
        for n in range(3):
            await manager.broadcast(f"m{n}")
            assert await asyncio.wait_for(first.recv(), 5) == f"m{n}"
        token, device, positions = first.token, first.device, first.positions
        assert token is not None
        assert positions
        got: list[Any] = []
        async with connect(url, protocol=2, token=token, device=device,
                           positions=positions) as second:
            await manager.broadcast("m3")
            got.append(await asyncio.wait_for(second.recv(), 5))
        assert got == ["m3"]  # nothing the first process handled comes again
        await first.aclose()


async def test_a_channel_the_server_ended_is_dropped_and_not_subscribed_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server takes the client out of a channel: the client forgets it, tells the
    subscription's on_unsubscribed, and subscribes after a reconnect only to the channels
    it still has. Before, it kept the channel and subscribed to it again."""
    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=60,
                                                         heartbeat_timeout=120))
    asked: list[str] = []
    ended: asyncio.Queue[str] = asyncio.Queue()
    async with (
        served(history_app(manager, asked), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                retry=RetryPolicy(base=0.01, cap=0.05)) as client,
    ):
        await client.subscribe("room", on_unsubscribed=ended.put_nowait)
        await client.subscribe("lobby")
        client_id = client.client_id
        assert client_id is not None
        await manager.leave_group(client_id, "room")
        assert await asyncio.wait_for(ended.get(), 5) == "server"
        first = client.session
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')

        async def back_in_lobby() -> bool:  # no history: the client subscribes again
            return (client.session is not first and asked.count("lobby") >= 2
                    and await manager.get_group_members("lobby") == [client_id])

        await until(back_in_lobby, timeout=10)
        assert asked.count("room") == 1  # (the loop subscribes in order: room came first)
        assert await manager.get_group_members("room") == []
        assert ended.empty()


class Gate:
    """The client's URL: the server's while open, else a port nothing listens on (the
    client retries there, its session away, until the gate opens)."""

    def __init__(self, url: str) -> None:
        self.url, self.open = url, True

    def __call__(self) -> str:
        return self.url if self.open else "ws://127.0.0.1:1/ws"

@asynccontextmanager
async def roomy_resumes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[WebSocketConnectionManager, ClientConnection, asyncio.Event]]:
    """A server keeping sessions, whose max_message_size (80,000) has room for a resume at
    its budget and with no limit on channels, and a v2 client of it; the event is set at
    each of the client's resumes."""
    manager = WebSocketConnectionManager(kept_history().replace(
        max_message_size=80_000, max_channels_per_connection=None))
    resumed = asyncio.Event()
    async with (
        served(history_app(manager, []), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                retry=RetryPolicy(base=0.01, cap=0.05),
                on_resume=lambda _result: resumed.set()) as client,
    ):
        yield manager, client, resumed


async def resumed_after_a_restart(manager: WebSocketConnectionManager,
                                  client: ClientConnection, resumed: asyncio.Event) -> str:
    """Close the client's socket as a restarting server does (1012, retry at once) and
    wait until it resumed its session; return its client id."""
    client_id = client.client_id
    assert client_id is not None
    await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
    await asyncio.wait_for(resumed.wait(), 10)
    assert client.last_resume is not None
    assert client.last_resume.session_resumed
    return client_id


async def away(manager: WebSocketConnectionManager, client_id: str, gate: Gate) -> None:
    """Drop the client's socket (1012: it comes back) and keep it away."""
    gate.open = False
    await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')

    async def gone() -> bool:
        return not manager.is_connected(client_id)

    await until(gone, timeout=10)


def kept_history() -> WebSocketConfig:
    return WebSocketConfig(history_size=50, history_ttl=60.0, session_ttl=60.0,
                           heartbeat_interval=60, heartbeat_timeout=120)


async def test_a_leave_while_away_ends_the_subscription_when_the_client_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server takes the client out of channels while it is away (no socket to tell):
    the resumed session tells it, both a channel that follows presence and one that does
    not. Before, the client kept both for good (the resume said recovered), subscribed
    again only to the presence one (the hook allowed it: back in, against the leave)."""
    manager = WebSocketConnectionManager(kept_history())
    asked: list[str] = []
    ended: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    resumed = asyncio.Event()
    async with served(history_app(manager, asked), "websockets-sansio", monkeypatch) as server:
        gate = Gate(f"ws://127.0.0.1:{server.port}/ws")
        async with connect(gate, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05),
                           on_resume=lambda _result: resumed.set()) as client:
            for channel in ("room", "stage", "kept"):
                await client.subscribe(channel, presence=channel == "stage",
                                       on_unsubscribed=lambda reason, channel=channel:
                                       ended.put_nowait((channel, reason)))
            client_id = client.client_id
            assert client_id is not None
            await away(manager, client_id, gate)
            await manager.leave_group(client_id, "room")
            await manager.leave_group(client_id, "stage")
            gate.open = True
            await asyncio.wait_for(resumed.wait(), 10)
            assert client.last_resume is not None
            assert client.last_resume.session_resumed
            told = {await asyncio.wait_for(ended.get(), 5) for _ in range(2)}
            assert told == {("room", "server"), ("stage", "server")}
            assert await manager.get_client_groups(client_id) == ["kept"]
            assert asked.count("stage") == 1  # not subscribed again: it was ended first
            await manager.send_to_group("room", "gone")
            await manager.send_to_client(client_id, "marker")
            assert await asyncio.wait_for(client.recv(), 5) == "marker"  # no leak


async def test_a_refused_subscribe_after_a_kept_resume_ends_the_membership(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: a presence channel, a resume that kept the session, and the
    hook now refusing the client's automatic subscribe. Before, the server kept the member
    (and its presence entry) while the client forgot the channel: its messages leaked
    into the application's ordinary message stream. A refusal changes no membership on the
    server, so the client leaves the channel itself, then tells on_unsubscribed the
    refusal's code."""
    manager = WebSocketConnectionManager(kept_history())
    revoked: set[str] = set()
    ended: asyncio.Queue[str] = asyncio.Queue()
    app = session_app(manager)

    async def hook(request: SubscribeRequest) -> dict[str, str] | bool:
        return False if request.channel in revoked else {"name": request.client_id}

    manager.on_subscribe(hook)
    async with served(app, "websockets-sansio", monkeypatch) as server:
        gate = Gate(f"ws://127.0.0.1:{server.port}/ws")
        async with connect(gate, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05)) as client:
            await client.subscribe("room", presence=True, on_message=lambda _data: None,
                                   on_unsubscribed=ended.put_nowait)
            client_id = client.client_id
            assert client_id is not None
            await away(manager, client_id, gate)
            revoked.add("room")  # the application withdraws the permission
            gate.open = True
            assert await asyncio.wait_for(ended.get(), 10) == "forbidden"
            assert await manager.get_group_members("room") == []  # (left before it is told)
            assert await manager.get_presence("room") == {}
            await manager.send_to_group("room", "after the refusal")
            await manager.send_to_client(client_id, "marker")
            assert await asyncio.wait_for(client.recv(), 5) == "marker"


async def test_an_own_unsubscribe_is_not_told_back_when_the_client_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The application leaves a channel while one of its messages is on its way (the
    server sends it before it takes the unsubscribe). Before, that message recorded the
    channel's position again, the next resume counted the channel as held, and the server
    told the client `unsubscribed` for a channel it had left itself. A group the
    application joins the client to after that keeps its position (a resume replays none
    of its messages twice)."""
    leave, route = Channels.unsubscribe, Subscriptions.route
    arrived = asyncio.Event()

    def routed(self: Subscriptions, channel: str | None, message: str | bytes) -> bool:
        if channel == "room":
            arrived.set()
        return route(self, channel, message)

    async def unsubscribe(self: Channels, conn: Connection, request: ChannelRequest) -> str:
        await manager.send_to_group(request.channel, "in flight")
        await asyncio.wait_for(arrived.wait(), 5)  # the client has it: only then the leave
        return await leave(self, conn, request)

    monkeypatch.setattr(Subscriptions, "route", routed)
    monkeypatch.setattr(Channels, "unsubscribe", unsubscribe)
    manager = WebSocketConnectionManager(kept_history())
    controls: list[ControlFrame] = []
    resumed = asyncio.Event()
    async with (
        served(history_app(manager, []), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2,
                retry=RetryPolicy(base=0.01, cap=0.05), on_control=controls.append,
                on_resume=lambda _result: resumed.set()) as client,
    ):
        await client.subscribe("room")
        await client.unsubscribe("room")
        assert await asyncio.wait_for(client.recv(), 5) == "in flight"  # (it came first)
        client_id = client.client_id
        assert client_id is not None
        await manager.join_group(client_id, "ops")  # the application's, after the leave
        await manager.send_to_group("ops", "joined")
        assert await asyncio.wait_for(client.recv(), 5) == "joined"
        assert sorted(client.positions) == ["g:ops"]
        await manager.disconnect(client_id, code=1012, reason='{"retry_ms": 10}')
        await asyncio.wait_for(resumed.wait(), 10)
        assert [frame for frame in controls if frame["type"] == "unsubscribed"] == []
        await manager.send_to_client(client_id, "marker")
        assert await asyncio.wait_for(client.recv(), 5) == "marker"  # nothing came twice


async def test_a_client_holding_many_long_channel_names_still_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The resuming connect frame names the channels the client holds; with its positions
    they take at most MAX_RESUME_TEXT bytes (as positions alone could), so a server whose
    max_message_size has room for that takes the frame. Before, only their count was
    bounded (1,000 names of up to 256 characters): the frame went over, the server closed
    with 1009, and the client took that as final."""
    async with roomy_resumes(monkeypatch) as (manager, client, resumed):
        channels = [f"room:{n:03d}:" + "x" * 240 for n in range(350)]  # ~88 KB of names
        for channel in channels:
            await client.subscribe(channel)
        client_id = await resumed_after_a_restart(manager, client, resumed)
        assert manager.is_connected(client_id)
        assert await manager.get_client_groups(client_id) == sorted(channels)
