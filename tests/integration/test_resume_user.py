"""A resume is for the user whose session it is. An application that names its clients
(``/ws/{client_id}``) and authenticates its users may see one client id used by another
user: a shared device, a kiosk. Before, a reconnect token of the client resumed its session
whoever connected with it: the new user was given the groups, the user data and the history
of the one before (and kept receiving their groups' messages). Now a resume by another user
(anonymous or authenticated, either way) begins afresh, as after an expired session: the
earlier groups are left, the resume frame says ``fresh``, nothing is replayed."""

from __future__ import annotations

from typing import Any

import pytest

from stabilizer import Identity, WebSocketConfig, WebSocketConnectionManager
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


async def resumed_as(manager: WebSocketConnectionManager, token: str,
                     user: str | None) -> tuple[list[Any], dict[str, Any], Session]:
    """`user` comes back on the client with its token: (the frames before the resume
    frame, the resume frame, the session, still open)."""
    ws = FakeWebSocket("again")
    session = manager.open_session(ws, CLIENT, token=token, positions="{}",
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
