"""A store that loses everything while a resume replays (the fault checker's seed 981578599,
namespace layout, history on; defect 39).

A client resumed on a replica, and Redis restarted empty after the resume had taken its
session over but before it read every stream back. A read that finds no stream at all
means "it expired: nothing was sent for longer than a session lives" only in the store that
still holds the session; in a store that lost everything it means nothing. The resume took
it for the first: the client held offset 1 of ``g:g2``, never got offset 2 nor a
``recovered: false`` for the stream, and went on with the stream's new epoch as if nothing
had been lost. A fresh session's catch-up (what its node delivered while it was admitted)
reads its streams back the same way, and had the same gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stabilizer import CloseCode, MemoryBackend, WebSocketConnectionManager
from stabilizer.backends.base import History
from stabilizer.backends.redis import RedisBackend
from stabilizer.pure.streams import client_stream, group_stream
from tests.conftest import ManagerFactory
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_emitter import until
from tests.integration.test_groups_history import HISTORY, resume_on
from tests.integration.test_pending_admissions import hold_fresh_session, pair
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest


async def restart_empty(manager: WebSocketConnectionManager, namespace: str) -> None:
    """What an empty restart of the store does to the namespace: every key is gone."""
    backend = manager.backend
    if isinstance(backend, MemoryBackend):
        hub = backend.hub
        hub.streams.clear()
        hub.sessions.clear()
        hub.client_groups.clear()
        return
    assert isinstance(backend, RedisBackend)
    url = manager.config.redis_url or ""
    client = RedisCluster.from_url(url) if manager.config.redis_cluster else Redis.from_url(url)
    try:  # (every key starts with the namespace's tag, or a tag it begins: keys.py)
        doomed = [key async for key in client.scan_iter(match=f"{{{namespace}*")]
        for key in doomed:  # (one at a time: on a Cluster they live in many slots)
            await client.delete(key)
    finally:
        await client.aclose()


async def owed_while_admitted(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                              monkeypatch: pytest.MonkeyPatch,
                              admit: Callable[[], Awaitable[object]],
                              ) -> tuple[asyncio.Task[object], asyncio.Event]:
    """Run `admit` (a fresh session of c1 on B) in a task, held right after its session
    opened, while A sends c1 a message ("owed") that B's listener delivers before c1 is in
    B's pool. Return the task, and the event that lets the admission go on."""
    opened, let_open = hold_fresh_session(b, "c1", monkeypatch)

    async def admitted() -> object:
        return await admit()

    admission = asyncio.create_task(admitted())
    await opened.wait()
    assert await a.send_to_client("c1", "owed")
    order = b._node.router.order  # type: ignore[attr-defined]

    async def delivered() -> bool:  # B's listener took it, and found nobody to give it to
        last = order.last(client_stream("c1"))
        return last is not None and last[0] >= 1

    await until(delivered)
    return admission, let_open


def lose_store_before_reading(monkeypatch: pytest.MonkeyPatch,
                              manager: WebSocketConnectionManager, namespace: str,
                              stream: str) -> list[str]:
    """Make the store restart empty just before `manager` first reads `stream` back (after
    the resume took the session over); return the streams read, in order."""
    history = manager.backend.history
    read = history.read
    streams_read: list[str] = []

    async def read_after_a_restart(name: str, after: int, epoch: str,
                                   **bounds: int) -> History:
        if name == stream and stream not in streams_read:
            await restart_empty(manager, namespace)
        streams_read.append(name)
        return await read(name, after, epoch, **bounds)

    monkeypatch.setattr(history, "read", read_after_a_restart)
    return streams_read


async def away_from_room(cluster: Cluster) -> tuple[WebSocketConnectionManager, dict[str, Any]]:
    """Node a with history; alice got offset 1 of the room's stream (the frame is returned)
    and went away; offset 2 was sent meanwhile: the store holds it, alice does not."""
    a = cluster("a", **HISTORY)
    await started(a)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    await a.send_to_group("room", "seen")
    seen: dict[str, Any] = await alice.next_json()
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    await a.send_to_group("room", "owed")
    return a, seen


async def test_a_stream_the_store_lost_during_the_replay_is_not_recovered(
        cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice holds offset 1 of the room's stream; offset 2 was sent while she was away. The
    store loses everything after her resume took the session over, before it reads the
    room back: the resume must not say the room was recovered (it said nothing of it, and
    its next message, offset 1 of a new epoch, came as if in order)."""
    a, seen = await away_from_room(cluster)
    room = group_stream("room")
    streams_read = lose_store_before_reading(monkeypatch, a, namespace, room)

    sock, (recovered, replayed, failed) = await resume_on(
        a, "alice", {room: (seen["offset"], seen["epoch"])})
    assert room in streams_read
    assert (recovered, replayed) == (False, 0)
    assert room in failed, f"the resume said {failed} were lost, not the room"
    frames: list[dict[str, Any]] = [await sock.next_json()]  # the resume frame comes first
    await a.send_to_group("room", "new epoch")
    frames.append(await sock.next_json())
    assert [(f.get("type"), f.get("data")) for f in frames] == [
        ("resume", None), ("message", "new epoch")]
    assert frames[0]["recovered"] is False
    assert frames[1]["offset"] == 1
    assert frames[1]["epoch"] != seen["epoch"]  # (the new epoch the restart began)


async def test_a_stream_the_store_holds_nothing_of_is_recovered_while_it_keeps_the_session(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: with the store intact, a stream it holds nothing of (alice was
    never sent a direct message) is one nothing was sent on; the resume says so."""
    a, seen = await away_from_room(cluster)
    history = a.backend.history
    read = history.read
    found: dict[str, History] = {}

    async def recorded(name: str, after: int, epoch: str, **bounds: int) -> History:
        found[name] = await read(name, after, epoch, **bounds)
        return found[name]

    monkeypatch.setattr(history, "read", recorded)
    room = group_stream("room")
    sock, (recovered, replayed, failed) = await resume_on(
        a, "alice", {room: (seen["offset"], seen["epoch"])})
    assert found[client_stream("alice")].absent  # (what the check is about)
    assert (recovered, replayed, failed) == (True, 1, [])
    assert (await sock.next_json())["data"] == "owed"


@pytest.mark.redis
async def test_a_catch_up_that_finds_its_stream_lost_tells_the_client(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """B delivered a direct message to c1 while c1's fresh session was being admitted (its
    session began before it), then the store lost everything before B read it back for c1:
    c1 is told it lost its stream (before, it got neither the message nor a word)."""
    a, b = await pair(make_manager, redis_url, namespace, **HISTORY)
    sock = FakeSocket("c1")
    admitting_c1, release = await owed_while_admitted(a, b, monkeypatch,
                                                      lambda: b.connect("c1", sock))
    await restart_empty(b, namespace)
    release.set()
    await admitting_c1
    await a.broadcast("after")  # (a new epoch of ``all``: the store lost the old one too)
    got = await sock.next_json()
    assert got == {"type": "resume", "recovered": False, "replayed": 0,
                   "failed": [client_stream("c1")]}
