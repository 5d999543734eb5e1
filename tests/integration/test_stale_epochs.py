"""A message of an epoch the store has left (the fault checker's seed 625056828, spread
layout with presence buckets, history on).

Redis restarted empty while a replica's link to it was slow: two broadcasts sent just
before the restart reached that replica only after a client of it had resumed in the new
epoch. Epoch ids are not ordered, and a message that starts an epoch (offset 1) was taken
for the start of a newer one: the client moved back to the old epoch, whose messages it
had, and missed the rest of the new one without being told. A node that sees another
epoch's first message now asks the store which epoch it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stabilizer import MemoryBackend, WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from stabilizer.config import CloseCode
from stabilizer.pure.streams import ALL
from stabilizer.pure.wire import Envelope
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_groups_history import resume_on
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest

HISTORY = {"history_size": 10, "history_ttl": 60.0, "session_ttl": 60.0}


async def lose_stream(manager: WebSocketConnectionManager, stream: str) -> None:
    """What an empty restart of Redis does to `stream`."""
    backend = manager.backend
    if isinstance(backend, MemoryBackend):
        backend.hub.streams.pop(stream)
        return
    assert isinstance(backend, RedisBackend)
    keys = backend.keys
    assert await backend.client.delete(keys.stream(stream), keys.stream_meta(stream)) == 2


def intercept(monkeypatch: pytest.MonkeyPatch, manager: WebSocketConnectionManager,
              passes: Callable[[Envelope], bool]) -> list[Envelope]:
    """Record every envelope `manager`'s router receives; pass on those `passes` lets
    through (the others are lost, as on a cut link)."""
    router = manager._node.router
    receive = router.receive
    seen: list[Envelope] = []

    async def filtered(envelope: Envelope) -> None:
        seen.append(envelope)
        if passes(envelope):
            await receive(envelope)

    monkeypatch.setattr(router, "receive", filtered)
    return seen


async def test_a_late_message_of_an_epoch_the_store_left_is_dropped(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    heard = intercept(monkeypatch, b, lambda envelope: True)
    await a.broadcast("old")
    await a.broadcast("old 2")
    old = [await bob.next_json() for _ in range(2)]
    assert [(f["data"], f["offset"]) for f in old] == [("old", 1), ("old 2", 2)]
    late = [e for e in heard if e.epoch == old[0]["epoch"]]
    assert [e.offset for e in late] == [1, 2]

    await lose_stream(a, ALL)
    await a.broadcast("new 1")
    await a.broadcast("new 2")
    fresh = [await bob.next_json() for _ in range(2)]
    assert [(f["data"], f["offset"]) for f in fresh] == [("new 1", 1), ("new 2", 2)]
    assert fresh[0]["epoch"] != old[0]["epoch"]

    for envelope in late:  # the old epoch's messages, held up in the network
        await b._node.router.receive(envelope)
    await a.broadcast("new 3")
    after = await bob.next_json()  # (no resume frame: nothing was lost)
    assert (after["data"], after["offset"], after["epoch"]) == ("new 3", 3, fresh[0]["epoch"])


async def test_a_late_message_is_dropped_where_a_resume_told_the_node_the_epoch(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's path: node b followed ``all`` from before any epoch (carol's session began
    when the stream had none), and its subscription heard nothing of the new epoch (it was
    cut by the restart); bob then resumed on b in the new epoch, so b's first sight of the
    epoch was bob's position. The old epoch's late first message must not pass for a
    newer epoch's start: the resume tells b the epoch (the store vouched for it)."""
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    carol = FakeSocket("carol")
    await b.connect("carol", carol)  # ``all`` has no epoch yet
    bob = FakeSocket("bob")
    await a.connect("bob", bob)
    released: list[bool] = []  # until then b's link lets nothing of ``all`` through
    withheld = intercept(monkeypatch, b, lambda envelope: envelope.stream != ALL or bool(released))
    await a.broadcast("old")
    old = await bob.next_json()
    await lose_stream(a, ALL)
    await a.broadcast("new 1")
    await a.broadcast("new 2")
    new = [await bob.next_json() for _ in range(2)]
    assert new[0]["epoch"] != old["epoch"]
    await a.disconnect("bob", code=CloseCode.GOING_AWAY)

    resumed, (recovered, replayed, _) = await resume_on(b, "bob", {ALL: (1, new[0]["epoch"])})
    assert (recovered, replayed) == (True, 1)
    released.append(True)
    late = next(e for e in withheld if e.epoch == old["epoch"])
    await b._node.router.receive(late)  # the old epoch's first message, held up
    await a.broadcast("new 3")
    frames: list[dict[str, Any]] = []  # (the replay, the resume frame, then live ones)
    while not any(f.get("data") == "new 3" for f in frames):
        frames.append(await resumed.next_json())
    assert [(f["data"], f["offset"]) for f in frames if f.get("type") == "message"] == [
        ("new 2", 2), ("new 3", 3)]
    got = [await carol.next_json() for _ in range(3)]
    assert [(f["data"], f["offset"], f["epoch"]) for f in got] == [
        (f"new {i}", i, new[0]["epoch"]) for i in (1, 2, 3)]


async def test_an_epoch_a_resuming_client_names_for_a_stream_the_store_lacks_is_not_taken(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions are the client's word: for a stream the store holds nothing of, the epoch a
    resume names is not one the node may follow (it would take the stream's real first
    epoch for an end of that one, and tell its other clients they lost messages)."""
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    carol = FakeSocket("carol")
    await b.connect("carol", carol)  # ``all`` has no epoch yet
    await a.connect("bob", FakeSocket("bob"))
    await a.disconnect("bob", code=CloseCode.GOING_AWAY)
    _, (recovered, _, _) = await resume_on(b, "bob", {ALL: (7, "made-up")})
    assert recovered is True  # (nothing was sent: nothing to miss)

    # the first message of ``all`` is lost with b's subscription: a gap at offset 1
    intercept(monkeypatch, b, lambda envelope: envelope.stream != ALL or envelope.offset != 1)
    await a.broadcast("first")
    await a.broadcast("second")
    got = [await carol.next_json() for _ in range(2)]
    assert [(f.get("type"), f.get("data"), f.get("offset")) for f in got] == [
        ("message", "first", 1), ("message", "second", 2)]
