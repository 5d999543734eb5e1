"""A resume is for the user whose session it is. An application that names its clients
(``/ws/{client_id}``) and authenticates its users may see one client id used by another
user: a shared device, a kiosk. Before, a reconnect token of the client resumed its session
whoever connected with it: the new user was given the groups, the user data and the history
of the one before (and kept receiving their groups' messages). Now a resume by another user
(anonymous or authenticated, either way) begins afresh, as after an expired session: the
earlier groups are left, the resume frame says ``fresh``, nothing is replayed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import Identity, WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.errors import BackendUnavailable
from stabilizer.session.session import Session
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket

CLIENT = "kiosk-7"
GROUP = "private"


def with_history(config: WebSocketConfig) -> WebSocketConfig:
    return config.replace(history_size=50, history_ttl=60.0, session_ttl=60.0)


def identity_of(user: str | None) -> Identity | None:
    return Identity(user) if user is not None else None


async def goes_away(ws: FakeWebSocket, session: Session) -> None:
    """The client drops (no close of the application's): its session stays resumable."""
    ws.client_leaves()
    assert await session.receive() is None


async def first_user_leaves_a_session(manager: WebSocketConnectionManager,
                                      user: str | None) -> str:
    """`user` uses the client: joins a group, gets a message and user data, drops; one
    more message is sent while it is away. Returns the client's reconnect token."""
    ws = FakeWebSocket("first")
    async with manager.open_session(ws, CLIENT, identity=identity_of(user)) as session:
        welcome = await ws.next_json()
        await manager.join_group(CLIENT, GROUP)
        await manager.set_user_data(CLIENT, "card", "the first user's")
        await manager.send_to_group(GROUP, "secret-0")
        assert (await ws.next_json())["stream"] == f"g:{GROUP}"
        await goes_away(ws, session)
    await manager.send_to_group(GROUP, "secret-1")
    return str(welcome["token"])


async def resumed_as(manager: WebSocketConnectionManager, token: str, user: str | None,
                     positions: str = "{}") -> tuple[list[Any], dict[str, Any], Session]:
    """`user` comes back on the client with its token: (the frames before the resume
    frame, the resume frame, the session, still open)."""
    ws = FakeWebSocket("again")
    session = manager.open_session(ws, CLIENT, token=token, positions=positions,
                                   identity=identity_of(user))
    await session.__aenter__()
    assert session.refused is None
    frames = [await ws.next_json()]
    while frames[-1].get("type") != "resume":
        frames.append(await ws.next_json())
    return frames[:-1], frames[-1], session


@pytest.mark.parametrize(("first", "then"), [("alice", "bob"), ("alice", None),
                                             (None, "bob")])
async def test_a_resume_by_another_user_begins_a_fresh_session(
        config: WebSocketConfig, make_manager: ManagerFactory,
        first: str | None, then: str | None) -> None:
    manager = make_manager(with_history(config))
    token = await first_user_leaves_a_session(manager, first)
    frames, resume, session = await resumed_as(manager, token, then)
    try:
        assert resume == {"type": "resume", "recovered": False, "replayed": 0,
                          "failed": ["*"], "fresh": True}
        assert session.recovered is False
        assert [f for f in frames if f.get("stream") == f"g:{GROUP}"] == []
        assert await manager.get_group_members(GROUP) == []
        assert await manager.get_user_data(CLIENT, "card") is None
        assert session.user_id == then
    finally:
        await session.__aexit__(None, None, None)


async def test_the_same_user_still_resumes_its_session(
        config: WebSocketConfig, make_manager: ManagerFactory) -> None:
    manager = make_manager(with_history(config))
    token = await first_user_leaves_a_session(manager, "alice")
    frames, resume, session = await resumed_as(manager, token, "alice")
    try:
        assert (resume["recovered"], "fresh" in resume) == (True, False)
        assert [f["data"] for f in frames
                if f.get("stream") == f"g:{GROUP}"] == ["secret-0", "secret-1"]
        assert await manager.get_group_members(GROUP) == [CLIENT]
        assert await manager.get_user_data(CLIENT, "card") == "the first user's"
    finally:
        await session.__aexit__(None, None, None)


def open_fails_once(manager: WebSocketConnectionManager,
                    monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The client's first session open fails as in an outage (the store did not answer);
    the store answers again from then on. The event is set once it failed."""
    sessions = manager.backend.sessions
    activate = sessions.activate
    failed = asyncio.Event()

    async def unreachable_once(client_id: str, **options: Any) -> dict[str, tuple[int, str]]:
        if client_id == CLIENT and not failed.is_set():
            failed.set()
            raise BackendUnavailable("redis unavailable: no answer (as in an outage)")
        return await activate(client_id, **options)

    monkeypatch.setattr(sessions, "activate", unreachable_once)
    return failed


async def used_after_a_failed_open(manager: WebSocketConnectionManager, user: str | None,
                                   monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """`user` connects on the client while its session cannot be opened; then the
    application saves user data and sends it a message (on the user's stream for a user,
    else on the client's), the client drops, and one more is sent while it is away.
    Returns (the client's token, the positions it holds)."""
    failed = open_fails_once(manager, monkeypatch)

    async def send(text: str) -> None:
        if user is None:
            await manager.send_to_client(CLIENT, text)
        else:
            await manager.send_to_user(user, text)

    ws = FakeWebSocket("first")
    async with manager.open_session(ws, CLIENT, identity=identity_of(user)) as session:
        welcome = await ws.next_json()
        assert failed.is_set()
        await manager.set_user_data(CLIENT, "card", "kept")
        await send("while-connected")
        got = await ws.next_json()
        await goes_away(ws, session)
    await send("while-away")
    return str(welcome["token"]), json.dumps({got["stream"]: [got["offset"], got["epoch"]]})


@pytest.mark.parametrize("user", ["alice", None])
async def test_user_data_saved_after_a_failed_open_makes_no_session(
        config: WebSocketConfig, make_manager: ManagerFactory,
        monkeypatch: pytest.MonkeyPatch, user: str | None) -> None:
    """A reviewer's scenario: the session of the client never opened, so its resume
    begins afresh and says what it could not bring back, on every backend. Redis used to
    make a session of the user data alone (no baselines): an anonymous client's resume
    then claimed a recovery that replayed nothing of what was sent while it was away, and
    a user's was taken for another user's."""
    manager = make_manager(with_history(config))
    token, _ = await used_after_a_failed_open(manager, user, monkeypatch)
    frames, resume, session = await resumed_as(manager, token, user)
    try:
        assert resume == {"type": "resume", "recovered": False, "replayed": 0,
                          "failed": ["*"], "fresh": True}
        assert [f for f in frames if "data" in f] == []
        assert await manager.get_user_data(CLIENT, "card") is None
    finally:
        await session.__aexit__(None, None, None)


@pytest.mark.redis
async def test_a_session_an_earlier_version_made_of_user_data_alone_is_resumed(
        redis_url: str, namespace: str, make_manager: ManagerFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's scenario with a node of an earlier version saving the user data: it
    wrote the field whatever the session, into a hash of its own (no baselines). Such a
    session tells nothing of its user: the user's resume takes it over, as before
    sessions were checked (the message sent while away is replayed, the data kept)."""
    manager = make_manager(with_history(WebSocketConfig(
        redis_url=redis_url, namespace=namespace, heartbeat_interval=60,
        heartbeat_timeout=120)))
    store = Redis.from_url(redis_url)

    async def saved_as_before(client_id: str, key: str, value: bytes) -> None:
        await store.hset(KeyLayout(namespace).session(client_id), f"u:{key}", value)

    monkeypatch.setattr(manager.backend.sessions, "save_user_data", saved_as_before)
    try:
        token, positions = await used_after_a_failed_open(manager, "alice", monkeypatch)
    finally:
        await store.aclose()
    frames, resume, session = await resumed_as(manager, token, "alice", positions)
    try:
        assert (resume["recovered"], resume["failed"], "fresh" in resume) == (True, [], False)
        assert [f["data"] for f in frames if "data" in f] == ["while-away"]
        assert await manager.get_user_data(CLIENT, "card") == "kept"
    finally:
        await session.__aexit__(None, None, None)
