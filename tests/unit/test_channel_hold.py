"""A connection holds back the frames of a channel whose subscribe is in flight
(connection/holding.py): they follow the reply when it is a member, are dropped when not,
and count against the outbox's bounds meanwhile."""

from __future__ import annotations

from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection, OutboxLimits
from stabilizer.connection.sockets import Frame
from tests.unit.test_connection import BOUND, Failures, FakeSocket


def of(channel: str | None, text: str) -> Frame:
    frame = Frame.text(text)
    frame.channel = channel  # (as a group's fan-out marks it)
    return frame


async def test_a_joining_channels_frames_wait_and_follow_what_was_sent_meanwhile() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures())
    conn.hold_channel("room")
    assert conn.deliver(of("room", "room 1"), 0.0, "g:room", 1, "e")
    assert conn.deliver(of("other", "other 1"), 0.0)  # another channel: not held
    assert conn.deliver(of(None, "direct"), 0.0)
    assert conn.deliver(of("room", "room 1"), 0.0, "g:room", 1, "e")  # a late copy
    conn.offer(Frame.text("reply"), 0.0)
    conn.release_channel("room", 0.0, member=True)
    assert conn.deliver(of("room", "room 2"), 0.0, "g:room", 2, "e")
    assert sock.texts() == ["other 1", "direct", "reply", "room 1", "room 2"]


async def test_a_failed_subscribe_drops_what_was_held_and_its_bytes() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, 100, BOUND), Failures())
    before = conn.memory_estimate()
    conn.hold_channel("room")
    conn.deliver(of("room", "secret"), 0.0)
    assert conn.memory_estimate() > before
    conn.release_channel("room", 0.0, member=False)
    conn.deliver(of("room", "after"), 0.0)  # (a membership the application gave it since)
    assert sock.texts() == ["after"]
    assert conn.memory_estimate() == before


async def test_held_channel_frames_count_against_the_outbox_bounds() -> None:
    failures = Failures()
    conn = Connection("alice", FakeSocket(), OutboxLimits(3, None, BOUND), failures)
    conn.hold_channel("a")
    conn.hold_channel("b")  # (two channels' held frames count together)
    assert conn.deliver(of("a", "a 1"), 0.0)
    assert conn.deliver(of("a", "a 2"), 0.0)
    assert conn.deliver(of("b", "b 1"), 0.0)
    assert failures.codes == []
    assert not conn.deliver(of("b", "one too many"), 0.0)
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]
    conn.release_channel("a", 0.0, member=True)  # closed: nothing more is sent or counted
    assert conn.memory_estimate() == Connection("alice", FakeSocket(), OutboxLimits(
        3, None, BOUND), Failures()).memory_estimate()


async def test_a_replay_holds_what_a_subscribe_held_until_it_ends() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures(), hold=True)
    conn.hold_channel("room")
    conn.deliver(of("room", "room 1"), 0.0)
    conn.release_channel("room", 0.0, member=True)
    assert sock.texts() == []  # the replay still runs
    conn.release_held({}, 0.0)
    assert sock.texts() == ["room 1"]
