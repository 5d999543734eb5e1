"""Where a session's promise begins and ends, on every backend: a resume replays no group
message from before the client's membership began (whatever position it claims), and a
fresh session owes its client what was sent to it from the moment it was routable."""

from __future__ import annotations

import json

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
