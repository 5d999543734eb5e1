"""Memberships that no connection holds when a client connects afresh: writes that reach
the store after their client was swept (the fault checker's seed 1027700417, spread layout,
history off), and a join that outlived a close (seed 1555694165, defect 22's leftover).

A node whose Redis link stalls can be reaped while it lives: its clients' presence goes and
the sweep ends their groups. A join that node sent before the stall may still reach Redis
afterwards, and if the node dies before the join's next step (or its settle), the client's
group set keeps what that join wrote. Without history a connection begins with no groups,
so a fresh connection of the client now ends whatever its set lists, in its register step
where one slot holds both, else in one more step before it is admitted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConnectionManager
from stabilizer.backends.redis import RedisBackend
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_disconnect_race import SPLIT
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest


async def fresh_x_after_a_late_join(a: WebSocketConnectionManager,
                                    late: WebSocketConnectionManager) -> FakeSocket:
    """x has no connection anywhere when `late`'s join of x to the room lands (as a reaped
    node's join that was held up in the network); then x connects to a afresh."""
    await started(a, late)
    await late.backend.groups.join("x", "room")
    socket = FakeSocket("x-on-a")
    await a.connect("x", socket)
    return socket


async def test_a_fresh_connection_ends_a_join_written_after_its_client_was_swept(
        cluster: Cluster) -> None:
    a, late = cluster("a"), cluster("late")
    await fresh_x_after_a_late_join(a, late)
    conn = a.get_connection("x")
    assert conn is not None
    assert conn.groups == set()
    assert await a.get_client_groups("x") == []
    assert await a.get_group_members("room") == []


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("layout", sorted(SPLIT))
async def test_a_fresh_connection_ends_a_late_join_across_slots(
        cluster: Cluster, layout: str) -> None:
    a, late = cluster("a", **SPLIT[layout]), cluster("late", **SPLIT[layout])
    await fresh_x_after_a_late_join(a, late)
    assert await a.get_client_groups("x") == []
    assert await a.get_group_members("room") == []


@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_fresh_connection_ends_a_spread_joins_first_step_that_came_late(
        cluster: Cluster) -> None:
    """The seed's shape: only the join's first step landed (x's group set lists the room,
    whose set lacks x), and its node died before the second."""
    a, late = cluster("a", redis_spread_keys=True), cluster("late", redis_spread_keys=True)
    await started(a, late)
    backend = late.backend
    assert isinstance(backend, RedisBackend)
    await backend.groups._spread._client("x", "join", "room")
    assert await a.get_client_groups("x") == ["room"]
    await a.connect("x", FakeSocket("x-on-a"))
    assert await a.get_client_groups("x") == []
    assert await a.get_group_members("room") == []


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("layout", sorted(SPLIT))
async def test_the_first_steps_of_many_connects_share_a_round_trip(
        cluster: Cluster, redis_url: str, layout: str) -> None:
    """Presence in other slots than the group sets, history off: every connect now reads
    its client's group set (the end's first step); concurrent connects send theirs in one
    pipeline, as their registrations."""
    a = cluster("a", **SPLIT[layout])
    await a.start()
    backend = a.backend
    assert isinstance(backend, RedisBackend)
    batcher = (backend.groups._spread._first_ends if layout == "spread"
               else backend.sessions._counts)
    sent: list[int] = []
    send = batcher._send

    async def counted(batch: list[object]) -> list[object]:
        sent.append(len(batch))
        return await send(batch)  # type: ignore[arg-type]

    batcher._send = counted  # type: ignore[method-assign]
    await asyncio.gather(*(a.connect(f"c{i}", FakeSocket(f"c{i}")) for i in range(20)))
    assert sum(sent) == 20
    assert len(sent) < 20
    store = Redis.from_url(redis_url)
    try:
        assert await store.exists(backend.keys.client_groups("c0")) == 0
    finally:
        await store.aclose()


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("layout", sorted(SPLIT))
async def test_a_socket_registered_between_a_close_and_its_end_begins_without_its_groups(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Defect 22's leftover (seed 1555694165, spread layout): x's socket on a closes while b
    joins x to the room (a's socket never had it); after a removed x's presence, x connects
    again, to b, before a's end of x's groups: that end then sees a newer socket and ends
    nothing. The new socket begins without the room, so the room must not keep x."""
    a, b = cluster("a", **SPLIT[layout]), cluster("b", **SPLIT[layout])
    await started(a, b)
    await a.connect("x", FakeSocket("x"))
    presence = a.backend.presence
    unregister = presence.unregister
    again = FakeSocket("x-again")

    async def join_then_reconnect(*args: Any, **kwargs: Any) -> bool:
        await b.join_group("x", "room")
        removed = await unregister(*args, **kwargs)
        await b.connect("x", again)
        return removed

    monkeypatch.setattr(presence, "unregister", join_then_reconnect)
    await a.disconnect("x")
    conn = b.get_connection("x")
    assert conn is not None
    assert conn.is_open
    assert conn.groups == set()
    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("x") == []
