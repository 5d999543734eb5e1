"""A connection holds back the frames of a channel whose subscribe is in flight
(connection/holding.py): they follow the reply when it is a member, are dropped when not,
and count against the outbox's bounds meanwhile: past them, the channel's held frames are
dropped (a member is told after the reply), not the connection."""

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


async def test_a_full_hold_drops_the_channels_held_frames_not_the_connection() -> None:
    sock = FakeSocket()
    failures = Failures()
    conn = Connection("alice", sock, OutboxLimits(3, None, BOUND), failures)
    empty = conn.memory_estimate()
    conn.hold_channel("a")
    conn.hold_channel("b")  # (two channels' held frames count together)
    assert conn.deliver(of("a", "a 1"), 0.0)
    assert conn.deliver(of("a", "a 2"), 0.0)
    assert conn.deliver(of("b", "b 1"), 0.0)
    assert conn.deliver(of("b", "b 2"), 0.0)  # b's held frame dropped to make room
    assert failures.codes == []
    conn.offer(Frame.text("reply b"), 0.0)
    conn.release_channel("b", 0.0, member=True, lost=Frame.text("b lost"))
    conn.offer(Frame.text("reply a"), 0.0)
    conn.release_channel("a", 0.0, member=True, lost=Frame.text("a lost"))  # a lost none
    assert sock.texts() == ["reply b", "b lost", "b 2", "reply a", "a 1", "a 2"]
    assert failures.codes == []
    assert conn.memory_estimate() == empty


async def test_a_full_hold_counts_its_bytes_and_sends_no_notice_to_a_non_member() -> None:
    sock = FakeSocket()
    failures = Failures()
    conn = Connection("alice", sock, OutboxLimits(16, 12, BOUND), failures)
    empty = conn.memory_estimate()
    conn.hold_channel("room")
    assert conn.deliver(of("room", "12345678"), 0.0)
    assert conn.deliver(of("room", "abcdefgh"), 0.0)  # over 12 bytes: the first dropped
    assert conn.memory_estimate() == empty + len("abcdefgh")
    conn.release_channel("room", 0.0, member=False, lost=Frame.text("lost"))
    assert sock.texts() == []
    assert failures.codes == []
    assert conn.memory_estimate() == empty
    conn.hold_channel("room")  # a new subscribe's hold starts whole
    conn.deliver(of("room", "again"), 0.0)
    conn.release_channel("room", 0.0, member=True, lost=Frame.text("lost"))
    assert sock.texts() == ["again"]


async def test_a_replays_hold_still_fails_the_connection_when_full() -> None:
    failures = Failures()
    conn = Connection("alice", FakeSocket(), OutboxLimits(2, None, BOUND), failures, hold=True)
    assert conn.deliver(of(None, "1"), 0.0)
    assert conn.deliver(of(None, "2"), 0.0)
    assert failures.codes == []
    assert not conn.deliver(of(None, "one too many"), 0.0)
    assert failures.codes == [CloseCode.TRY_AGAIN_LATER]


async def test_a_replay_holds_what_a_subscribe_held_until_it_ends() -> None:
    sock = FakeSocket()
    conn = Connection("alice", sock, OutboxLimits(16, None, BOUND), Failures(), hold=True)
    conn.hold_channel("room")
    conn.deliver(of("room", "room 1"), 0.0)
    conn.release_channel("room", 0.0, member=True)
    assert sock.texts() == []  # the replay still runs
    conn.release_held({}, 0.0)
    assert sock.texts() == ["room 1"]
