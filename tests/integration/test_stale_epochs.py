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

from typing import Any

import pytest

from stabilizer import MemoryBackend, WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from stabilizer.pure.streams import ALL
from stabilizer.pure.wire import Envelope
from tests.integration.test_cluster import Cluster, cluster, started
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


async def test_a_late_message_of_an_epoch_the_store_left_is_dropped(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    router = b._node.router
    receive = router.receive
    heard: list[Envelope] = []

    async def recorded(envelope: Envelope) -> Any:
        heard.append(envelope)
        return await receive(envelope)

    monkeypatch.setattr(router, "receive", recorded)
    await a.broadcast("old")
    old = await bob.next_json()
    assert (old["data"], old["offset"]) == ("old", 1)
    late = next(e for e in heard if e.epoch == old["epoch"])

    await lose_stream(a, ALL)
    await a.broadcast("new 1")
    await a.broadcast("new 2")
    fresh = [await bob.next_json() for _ in range(2)]
    assert [(f["data"], f["offset"]) for f in fresh] == [("new 1", 1), ("new 2", 2)]
    assert fresh[0]["epoch"] != old["epoch"]

    await router.receive(late)  # the old epoch's first message, held up in the network
    await a.broadcast("new 3")
    after = await bob.next_json()
    assert (after["data"], after["offset"], after["epoch"]) == ("new 3", 3, fresh[0]["epoch"])
