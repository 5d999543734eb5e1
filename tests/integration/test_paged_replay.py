"""A resume reads a long history a page at a time (a reviewer's defect: 40,000 kept messages
of 8 KB for one group).

The replay read each stream in one HISTORY script that returned every entry in one reply:
Redis was blocked for every replica meanwhile (2.9 s; another replica's broadcast timed out
behind it), the replica held the whole replay in memory, and past op_timeout the read
failed, so a stream Redis held whole was reported lost, again on every retry. Each page is
now a read of its own, bounded in entries and bytes and by its own op_timeout; a stream
trimmed between two pages is reported lost, never skipped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConnectionManager
from stabilizer.backends.base import History
from stabilizer.pure.streams import group_stream
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_groups_history import HISTORY, resume_on
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]

PAGE = 3  # entries a page holds at most in these tests
MISSED = 10  # messages of the room's stream kept for alice while she is away
ROOM = group_stream("room")


async def away_from_room(a: WebSocketConnectionManager) -> tuple[int, str]:
    """Alice joins the room, gets its first message and goes away; MISSED more are sent
    meanwhile. Return the position she holds."""
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    await a.send_to_group("room", "seen")
    seen = await alice.next_json()
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    for i in range(MISSED):
        await a.send_to_group("room", f"missed-{i}")
    return seen["offset"], seen["epoch"]


def replayed_frames(sent: list[str | bytes]) -> list[dict[str, Any]]:
    """The room's history frames sent before the resume frame, in order."""
    frames: list[dict[str, Any]] = []
    for raw in sent:
        if not isinstance(raw, str):
            continue
        frame = json.loads(raw)
        if frame.get("type") == "resume":
            return frames
        if frame.get("stream") == ROOM:
            frames.append(frame)
    raise AssertionError("no resume frame was sent")


def read_pages(manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch,
               of: str = ROOM) -> list[History]:
    """Give reads of history PAGE-entry pages; return what each read of stream `of` gave
    (the room's by default)."""
    monkeypatch.setattr("stabilizer.services.delivery.history_pages.HISTORY_PAGE", PAGE)
    history = manager.backend.history
    read = history.read
    pages: list[History] = []

    async def recorded(stream: str, after: int, epoch: str, **bounds: int) -> History:
        found = await read(stream, after, epoch, **bounds)
        if stream == of:
            pages.append(found)
        return found

    monkeypatch.setattr(history, "read", recorded)
    return pages


async def test_a_replay_longer_than_a_page_arrives_whole_once_and_in_order(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cluster("a", **HISTORY)
    await started(a)
    offset, epoch = await away_from_room(a)
    pages = read_pages(a, monkeypatch)
    sock, (recovered, replayed, failed) = await resume_on(a, "alice", {ROOM: (offset, epoch)})
    assert (recovered, replayed, failed) == (True, MISSED, [])
    frames = replayed_frames(sock.sent)
    assert [f["data"] for f in frames] == [f"missed-{i}" for i in range(MISSED)]
    assert [f["offset"] for f in frames] == list(range(offset + 1, offset + MISSED + 1))
    assert {f["epoch"] for f in frames} == {epoch}
    assert [len(page.envelopes) for page in pages] == [3, 3, 3, 1]  # none past a page
    for _ in range(MISSED + 1):  # (the replay and the resume frame, checked above)
        await sock.next_json()
    await a.send_to_group("room", "live")  # and live traffic follows, once
    assert (await sock.next_json())["data"] == "live"


async def test_a_stream_trimmed_between_two_pages_is_not_recovered(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than history_size messages are sent after the first page was read: the entries
    the next page needs are gone, which the resume must say, not skip."""
    small = {**HISTORY, "history_size": MISSED + 2}
    a = cluster("a", **small)
    await started(a)
    offset, epoch = await away_from_room(a)
    pages = read_pages(a, monkeypatch)
    read = a.backend.history.read

    async def trimmed_after_the_first_page(stream: str, after: int, epoch: str,
                                           **bounds: int) -> History:
        found = await read(stream, after, epoch, **bounds)
        if stream == ROOM and len(pages) == 1:
            for i in range(MISSED + 2):  # the stream now holds none of the missed ones
                await a.send_to_group("room", f"later-{i}")
        return found

    monkeypatch.setattr(a.backend.history, "read", trimmed_after_the_first_page)
    sock, (recovered, replayed, failed) = await resume_on(a, "alice", {ROOM: (offset, epoch)})
    assert len(pages) == 2
    assert (recovered, replayed, failed) == (False, PAGE, [ROOM])
    frames = replayed_frames(sock.sent)
    assert [f["data"] for f in frames] == [f"missed-{i}" for i in range(PAGE)]


async def test_a_replay_too_long_for_one_read_in_time_recovers_page_by_page(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is modelled as taking past op_timeout to give back more than PAGE entries
    at once (a read that returns more never answers in time): the replay, read a page at a
    time, still recovers everything."""
    a = cluster("a", **HISTORY, op_timeout=0.5)
    await started(a)
    offset, epoch = await away_from_room(a)
    pages = read_pages(a, monkeypatch)
    read = a.backend.history.read

    async def slow_past_a_page(stream: str, after: int, epoch: str, **bounds: int) -> History:
        found = await read(stream, after, epoch, **bounds)
        if len(found.envelopes) > PAGE:
            await asyncio.Event().wait()  # past op_timeout: the node gives up on it
        return found

    monkeypatch.setattr(a.backend.history, "read", slow_past_a_page)
    sock, (recovered, replayed, failed) = await resume_on(a, "alice", {ROOM: (offset, epoch)})
    assert (recovered, replayed, failed) == (True, MISSED, [])
    assert [f["data"] for f in replayed_frames(sock.sent)] == [
        f"missed-{i}" for i in range(MISSED)]
    assert len(pages) == 4
