"""Where a session's promise begins and ends, on every backend: a resume replays no group
message from before the client's membership began (whatever position it claims), and a
fresh session owes its client what was sent to it from the moment it was routable."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConnectionManager
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_groups_history import HISTORY, resume_on
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]


def data_of(frames: list[str | bytes]) -> list[str]:
    """The application data of the history frames among `frames`, in order."""
    found = []
    for frame in frames:
        if isinstance(frame, str) and frame.startswith('{"type":"message"'):
            found.append(json.loads(frame)["data"])
    return found


def last_positions(frames: list[str | bytes]) -> dict[str, tuple[int, str]]:
    """What a conforming client holds after `frames`: per stream, its last position."""
    held: dict[str, tuple[int, str]] = {}
    for frame in frames:
        if isinstance(frame, str) and frame.startswith('{"type":"message"'):
            message = json.loads(frame)
            held[message["stream"]] = (message["offset"], message["epoch"])
    return held


async def member_who_saw(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                         client_id: str, group: str, text: str) -> tuple[int, str]:
    """Connect `client_id` on `a`, join `group`, send `text` to it from `b`: the position
    the client got it at."""
    sock = FakeSocket(client_id)
    await a.connect(client_id, sock)
    await a.join_group(client_id, group)
    await b.send_to_group(group, text)
    frame = await sock.next_json()
    assert frame["data"] == text
    return frame["offset"], frame["epoch"]


Activate = Callable[..., Awaitable[dict[str, tuple[int, str]]]]


def send_in_the_window(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                       monkeypatch: pytest.MonkeyPatch) -> Activate:
    """Make `b` send alice a direct message and a broadcast each time `a` is about to open
    a session (alice is registered, routable, and her session not opened yet); return the
    store's own activate, to put back."""
    activate: Activate = a.backend.sessions.activate

    async def in_the_window(client_id: str, **kwargs: Any) -> dict[str, tuple[int, str]]:
        assert await b.send_to_client("alice", "direct-in-window")
        await b.broadcast("broadcast-in-window")
        return await activate(client_id, **kwargs)

    monkeypatch.setattr(a.backend.sessions, "activate", in_the_window)
    return activate


async def test_a_resume_replays_no_group_message_from_before_the_client_joined(
    cluster: Cluster,
) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    await member_who_saw(a, b, "insider", "room", "before-alice")  # the stream exists
    _, epoch = await member_who_saw(a, b, "alice", "room", "alice-saw")
    await a.disconnect("alice", code=CloseCode.GOING_AWAY)
    await b.send_to_group("room", "alice-missed")
    # (a forged claim: alice got nothing of the stream before she joined)
    sock, (recovered, replayed, failed) = await resume_on(b, "alice", {"g:room": (0, epoch)})
    assert data_of(sock.sent) == ["alice-saw", "alice-missed"], (
        "the resume reached before alice joined the group")
    assert (recovered, replayed, failed) == (True, 2, [])


async def test_a_rejoined_member_is_replayed_only_what_came_since_it_joined_again(
    cluster: Cluster,
) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    held = await member_who_saw(a, b, "alice", "room", "first-membership")
    await a.leave_group("alice", "room")
    await b.send_to_group("room", "while-away-from-room")
    await a.join_group("alice", "room")
    await a.disconnect("alice", code=CloseCode.GOING_AWAY)
    await b.send_to_group("room", "since-rejoined")
    # (the client still holds the position of its first membership's last message)
    sock, (recovered, replayed, failed) = await resume_on(a, "alice", {"g:room": held})
    assert data_of(sock.sent) == ["since-rejoined"]
    assert (recovered, replayed, failed) == (True, 1, [])


async def test_what_is_sent_between_register_and_session_open_is_owed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    await b.connect("bob", FakeSocket("bob"))  # "all" has a stream before alice comes
    await b.broadcast("before-alice")
    activate = send_in_the_window(a, b, monkeypatch)
    first = FakeSocket("alice")
    await a.connect("alice", first)
    monkeypatch.setattr(a.backend.sessions, "activate", activate)
    assert await b.send_to_client("alice", "after")
    while "after" not in data_of(first.sent):
        await first.next()
    await a.disconnect("alice", code=CloseCode.GOING_AWAY)
    sock, (recovered, _, failed) = await resume_on(b, "alice", last_positions(first.sent))
    got = data_of(first.sent) + data_of(sock.sent)
    assert (recovered, failed) == (True, [])
    assert sorted(got) == ["after", "broadcast-in-window", "direct-in-window"], (
        "a message sent to alice once she was routable was neither delivered nor replayed")


async def test_a_fresh_session_begins_where_its_streams_stood_when_it_became_routable(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but the client got nothing before it went away (its socket never took a
    frame): the session's own baselines must come before what was sent in the window."""
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    send_in_the_window(a, b, monkeypatch)
    first = FakeSocket("alice")
    first.gate.clear()  # a transport that takes nothing
    await a.connect("alice", first)
    await a.disconnect("alice", code=CloseCode.GOING_AWAY)
    sock, (recovered, replayed, failed) = await resume_on(b, "alice", {})
    assert first.sent == []
    assert sorted(data_of(sock.sent)) == ["broadcast-in-window", "direct-in-window"]
    assert (recovered, replayed, failed) == (True, 2, [])
