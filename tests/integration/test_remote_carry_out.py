"""A join or leave that another node writes reaches the client's node as a MEMBERSHIP
envelope; the client's own node may change the same membership while the envelope is on
its way. Whatever order the two take, the client's local membership ends as the store
lists it, so what the listings say is what send_to_group delivers.

Both scenarios hold the envelope on the client's node until the local change is done, the
order pub/sub latency gives them in production.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import WebSocketConnectionManager
from stabilizer.errors import BackendUnavailable
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest

LAYOUTS = pytest.mark.parametrize(
    ("cluster", "layout"),
    [("memory", {}), pytest.param("redis", {}, marks=pytest.mark.redis),
     pytest.param("redis", {"redis_spread_keys": True}, marks=pytest.mark.redis)],
    ids=["memory", "redis", "redis-spread"], indirect=["cluster"])


class HeldDelivery:
    """Holds the remote changes a node carries out until `release`; `arrived` is set once
    one reached it, `done` once the held ones were carried out."""

    def __init__(self, manager: WebSocketConnectionManager,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.arrived, self.done = asyncio.Event(), asyncio.Event()
        self._go_on = asyncio.Event()
        membership: Any = manager._node.membership
        original = membership._carry_out

        async def held(*args: Any) -> None:
            self.arrived.set()
            await self._go_on.wait()
            await original(*args)
            self.done.set()

        monkeypatch.setattr(membership, "_carry_out", held)

    async def release(self) -> None:
        self._go_on.set()
        async with asyncio.timeout(5.0):  # a bound: one envelope, already here
            await self.done.wait()


async def alice_on_a(cluster: Cluster, layout: dict[str, Any],
                     monkeypatch: pytest.MonkeyPatch,
                     ) -> tuple[WebSocketConnectionManager, WebSocketConnectionManager,
                                FakeSocket, HeldDelivery]:
    """Nodes a and b started, alice connected to a, and a's MEMBERSHIP deliveries held."""
    a, b = cluster("a", **layout), cluster("b", **layout)
    await started(a, b)
    socket = FakeSocket("alice")
    await a.connect("alice", socket)
    return a, b, socket, HeldDelivery(a, monkeypatch)


async def reaches(sender: WebSocketConnectionManager, socket: FakeSocket,
                  client_id: str) -> bool:
    """Whether a message `sender` sends to "room" reaches `client_id`: a direct message
    it sends next takes the same way to the client's node, after it."""
    await sender.send_to_group("room", "to the room")
    await sender.send_to_client(client_id, "after it")
    return await socket.next() == "to the room"


@LAYOUTS
async def test_a_leave_on_the_clients_node_sticks_after_a_join_from_another_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """b joins alice, then a (alice's node) makes her leave, one after the other. b's join
    returned once its envelope was published; a carried it out after the leave: it used to
    join alice locally again, so the room reached her though no listing named her."""
    a, b, socket, delivery = await alice_on_a(cluster, layout, monkeypatch)

    await b.join_group("alice", "room")
    async with asyncio.timeout(5.0):
        await delivery.arrived.wait()
    await a.leave_group("alice", "room")
    await delivery.release()

    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("alice") == []
    conn = a.get_connection("alice")
    assert conn is not None
    assert conn.groups == set()
    assert not await reaches(b, socket, "alice")


@LAYOUTS
async def test_a_join_on_the_clients_node_stands_after_a_leave_from_another_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """b makes alice leave a room she is not in yet while a (her node) joins her, with
    presence: b's leave is written first and routed as a leave; a's join lands after it.
    a carried the leave out as it said and dropped the room locally, though the store
    listed alice in it with her presence: nothing of the room reached her."""
    a, b, socket, delivery = await alice_on_a(cluster, layout, monkeypatch)

    await b.leave_group("alice", "room")
    async with asyncio.timeout(5.0):
        await delivery.arrived.wait()
    await a.join_group("alice", "room", presence={"x": 1})
    await delivery.release()

    assert await b.get_group_members("room") == ["alice"]
    assert list(await b.get_presence("room")) == ["alice"]
    conn = a.get_connection("alice")
    assert conn is not None
    assert conn.groups == {"room"}
    assert await reaches(b, socket, "alice")


@LAYOUTS
async def test_a_remote_change_whose_read_fails_is_settled_with_the_doubted_clients(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """The client's node cannot read the client's groups when b's join arrives: the
    client is in doubt, and the settle of the doubted clients (each maintenance step) joins
    it as the store lists it."""
    a, b, socket, delivery = await alice_on_a(cluster, layout, monkeypatch)
    groups: Any = a.backend.groups

    async def unreachable(client_id: str) -> list[str]:
        raise BackendUnavailable(f"groups of {client_id!r} unread (test)")

    monkeypatch.setattr(groups, "of_client", unreachable)
    await b.join_group("alice", "room")
    await delivery.release()
    conn = a.get_connection("alice")
    assert conn is not None
    assert conn.groups == set()

    monkeypatch.undo()  # (the store answers again)
    await a._node.membership.settle_doubted()
    assert conn.groups == {"room"}
    assert await reaches(b, socket, "alice")
