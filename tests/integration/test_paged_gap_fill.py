"""A node fills a gap in a sequenced stream a page at a time, as a resume replays one.

The gap filler (a node's listener fell behind, or its lost subscription is caught up) read
everything after the node's last offset in one unbounded read: a long gap held Redis for
every replica as the resume's replay once did, and past op_timeout the read failed, so the
node told its clients to resync although Redis held the whole gap. Each page is now a read
of its own, bounded in entries and bytes and by its own op_timeout, its messages delivered
before the next is read; a stream trimmed between two pages makes the clients resync.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import WebSocketConnectionManager
from stabilizer.backends.base import History
from stabilizer.pure.streams import ALL
from stabilizer.pure.wire import Envelope, Kind
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_groups_history import HISTORY
from tests.integration.test_paged_replay import PAGE, read_pages
from tests.integration.test_stale_epochs import intercept
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]

MISSED = 10  # messages of ``all`` node b's listener never hears


def missed(envelope: Envelope) -> bool:
    payload = envelope.payload
    return isinstance(payload, str) and payload.startswith("missed")


async def bob_behind(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, **options: Any,
                     ) -> tuple[WebSocketConnectionManager, WebSocketConnectionManager,
                                FakeSocket]:
    """Nodes a and b, bob on b having got ``all``'s first message (offset 1); then MISSED
    more are sent that b's listener loses, as on a cut link. Return (a, b, bob's socket)."""
    options = {**HISTORY, **options}
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    intercept(monkeypatch, b, lambda envelope: not missed(envelope))
    await a.broadcast("first")
    assert (await bob.next_json())["offset"] == 1
    for i in range(MISSED):
        await a.broadcast(f"missed-{i}")
    return a, b, bob


async def frames_until(sock: FakeSocket, data: str) -> list[dict[str, Any]]:
    """The frames `sock` is sent up to and including the message carrying `data`."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("data") != data:
        frames.append(await sock.next_json())
    return frames


async def test_a_gap_longer_than_a_page_is_filled_whole_once_and_in_order(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, bob = await bob_behind(cluster, monkeypatch)
    pages = read_pages(b, monkeypatch, ALL)
    await a.broadcast("after")  # reveals the gap to b
    frames = await frames_until(bob, "after")
    assert [(f["data"], f["offset"]) for f in frames] == [
        *((f"missed-{i}", i + 2) for i in range(MISSED)), ("after", MISSED + 2)]
    assert [len(page.envelopes) for page in pages] == [3, 3, 3, 1]  # none past a page
    await a.broadcast("live")  # nothing came twice: the next frame is the next message
    assert (await bob.next_json())["data"] == "live"
    assert b.stats.gaps_filled == 1


async def test_a_catch_up_longer_than_a_page_is_filled_whole_once_and_in_order(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last messages before a lost subscription have no successor to reveal them: the
    catch-up after it reads them up to the stream's end, a page at a time."""
    a, b, bob = await bob_behind(cluster, monkeypatch)
    pages = read_pages(b, monkeypatch, ALL)
    b._node.router.resubscribing()  # (the subscription itself is up: caught up at once)
    frames = [await bob.next_json() for _ in range(MISSED)]
    assert [(f["data"], f["offset"]) for f in frames] == [
        (f"missed-{i}", i + 2) for i in range(MISSED)]
    assert [len(page.envelopes) for page in pages] == [3, 3, 3, 1]
    await a.broadcast("live")
    assert (await bob.next_json())["data"] == "live"


async def test_a_gap_too_long_for_one_read_in_time_is_filled_page_by_page(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is modelled as taking past op_timeout to give back more than PAGE entries
    at once (a read that returns more never answers in time): read a page at a time, the
    gap is still filled, and the clients are not told to resync."""
    a, b, bob = await bob_behind(cluster, monkeypatch, op_timeout=0.5)
    pages = read_pages(b, monkeypatch, ALL)
    read = b.backend.history.read

    async def slow_past_a_page(stream: str, after: int, epoch: str, **bounds: int) -> History:
        found = await read(stream, after, epoch, **bounds)
        if len(found.envelopes) > PAGE:
            await asyncio.Event().wait()  # past op_timeout: the node gives up on it
        return found

    monkeypatch.setattr(b.backend.history, "read", slow_past_a_page)
    await a.broadcast("after")
    frames = await frames_until(bob, "after")
    assert [f.get("data") for f in frames] == [
        *(f"missed-{i}" for i in range(MISSED)), "after"]
    assert len(pages) == 4


async def test_a_stream_trimmed_between_two_pages_makes_its_clients_resync(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than history_size messages are sent after the fill's first page was read: the
    entries its next page needs are gone. Bob gets the first page's messages, then is told
    to resync (before the message that revealed the gap), never the gap skipped silently."""
    small = {"history_size": MISSED + 2}
    a, b, bob = await bob_behind(cluster, monkeypatch, **small)
    pages = read_pages(b, monkeypatch, ALL)
    read = b.backend.history.read

    async def trimmed_after_the_first_page(stream: str, after: int, epoch: str,
                                           **bounds: int) -> History:
        found = await read(stream, after, epoch, **bounds)
        if stream == ALL and len(pages) == 1:
            for i in range(MISSED + 2):  # the stream now holds none of the missed ones
                await a.broadcast(f"later-{i}")
        return found

    monkeypatch.setattr(b.backend.history, "read", trimmed_after_the_first_page)
    await a.broadcast("after")
    frames = await frames_until(bob, "later-0")
    assert [f.get("data") for f in frames if f["type"] == "message"] == [
        *(f"missed-{i}" for i in range(PAGE)), "after", "later-0"]
    told = frames[PAGE]
    assert (told["type"], told["recovered"], told["failed"]) == ("resume", False, [ALL])
    assert len(pages) == 2


async def test_telling_a_late_message_of_a_left_epoch_reads_one_entry(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message of another epoch than the one b follows makes b ask the store which epoch
    it holds: one entry tells it, not everything after b's last offset."""
    a, b, bob = await bob_behind(cluster, monkeypatch)
    await a.broadcast("after")
    await frames_until(bob, "after")  # (b filled the gap: it follows offset 12)
    late = Envelope(Kind.BROADCAST, "a", None, "late", offset=1, epoch="an-epoch-left")
    read = b.backend.history.read
    bounds: list[int] = []

    async def recorded(stream: str, after: int, epoch: str, *, max_entries: int = 0,
                       max_bytes: int = 0) -> History:
        bounds.append(max_entries)
        return await read(stream, after, epoch, max_entries=max_entries, max_bytes=max_bytes)

    monkeypatch.setattr(b.backend.history, "read", recorded)
    await b._node.router.receive(late)
    assert bounds == [1]
    await a.broadcast("live")  # the late message was dropped
    assert (await bob.next_json())["data"] == "live"
