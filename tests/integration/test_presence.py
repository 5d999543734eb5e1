"""Presence with state across nodes: joins, updates and leaves made on any node reach a
client following the group's presence on another, once each and in order, and the members
of a node that died leave it (their reaped clients' memberships end), with a diff that
says so. On a shared memory hub, on Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stabilizer import (
    MemoryBackend,
    MemoryHub,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.errors import BackendUnavailable
from stabilizer.pure.presence import PresenceSync
from stabilizer.pure.v2 import ChannelRequest
from tests.integration.test_cluster import QUIET, Cluster, cluster, started
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest


class Follower:
    """A client following a group's presence on one node: its copy, and every diff it got."""

    def __init__(self, manager: WebSocketConnectionManager, client_id: str) -> None:
        self.manager = manager
        self.client_id = client_id
        self.socket = FakeSocket(client_id)
        self.sync = PresenceSync()
        self.diffs: list[dict[str, Any]] = []
        self.states = 0  # presence_state frames after the subscribe's

    async def subscribe(self, group: str, meta: dict[str, Any] | None = None) -> None:
        await self.manager.connect(self.client_id, self.socket)

        @self.manager.on_subscribe
        def allow(request: SubscribeRequest) -> dict[str, Any] | None:
            return meta

        conn = self.manager.get_connection(self.client_id)
        assert conn is not None
        frames = await self.manager._node.sessions.channels.subscribe(
            conn, ChannelRequest(1, group, None, presence=True))
        assert isinstance(frames, list)
        reply, state = (json.loads(frame) for frame in frames[:2])
        assert reply["result"] == {"channel": group}
        assert state["type"] == "presence_state"
        self.sync.sync_state(state["presence"])
        for frame in frames[2:]:
            self.apply(json.loads(frame))

    def apply(self, frame: dict[str, Any]) -> None:
        assert frame["type"] == "presence_diff"
        self.diffs.append(frame)
        self.sync.sync_diff(frame)

    async def until(self, wanted: dict[str, Any], timeout: float = 15.0) -> None:
        """Apply the diffs that arrive until the copy lists `wanted`."""
        async with asyncio.timeout(timeout):
            while self.sync.list() != wanted:
                frame = await self.socket.next_json(timeout=timeout)
                if frame.get("type") == "presence_diff":
                    self.apply(frame)
                elif frame.get("type") == "presence_state":
                    self.states += 1
                    self.sync.sync_state(frame["presence"])


def item(client_id: str, **meta: Any) -> dict[str, Any]:
    return {"client_id": client_id, "meta": meta}


async def test_joins_updates_and_leaves_on_any_node_reach_a_follower(cluster: Cluster) -> None:
    a, b = cluster("a", presence_diff_window=0.01), cluster("b", presence_diff_window=0.01)
    await started(a, b)
    alice = Follower(a, "alice")
    await alice.subscribe("room", {"name": "Alice"})
    me = {"alice": [item("alice", name="Alice")]}
    assert alice.sync.list() == me
    await b.connect("bob", FakeSocket("bob"))
    await b.connect("carol", FakeSocket("carol"))
    await b.join_group("bob", "room", presence={"name": "Bob"})  # on its own node
    await a.join_group("carol", "room", presence={"name": "Carol"})  # from another node
    await alice.until({**me, "bob": [item("bob", name="Bob")],
                       "carol": [item("carol", name="Carol")]})
    assert await b.get_presence("room") == alice.sync.list()
    assert await a.count_presence("room") == 3
    await a.update_presence("bob", "room", {"name": "Robert"})  # a member on another node
    await alice.until({**me, "bob": [item("bob", name="Robert")],
                       "carol": [item("carol", name="Carol")]})
    await b.leave_group("carol", "room")
    await b.disconnect("bob")  # no resumable session: its memberships end
    await alice.until(me)
    assert await b.get_presence("room") == me
    # each change once: every join, update and leave was applied to a copy that had (or
    # lacked) exactly what it named
    joined = [key for diff in alice.diffs for key in diff["joins"]]
    left = [key for diff in alice.diffs for key in diff["leaves"]]
    assert sorted(joined) == ["bob", "bob", "carol"]
    assert sorted(left) == ["bob", "bob", "carol"]


async def test_the_members_of_a_dead_node_leave_with_a_diff(cluster: Cluster) -> None:
    a, b = cluster("a", node_ttl=1.0), cluster("b", node_ttl=1.0)
    await started(a, b)
    alice = Follower(a, "alice")
    await alice.subscribe("room", {"name": "Alice"})
    for n in range(3):
        await b.connect(f"b{n}", FakeSocket(f"b{n}"))
        await b.join_group(f"b{n}", "room", presence={"n": n})
    await alice.until({"alice": [item("alice", name="Alice")],
                       **{f"b{n}": [item(f"b{n}", n=n)] for n in range(3)}})

    # SIGKILL leaves no goodbye: stop b's loops without unregistering anything
    loops = [task for task in asyncio.all_tasks()
             if task.get_name().startswith("stabilizer-loop-")
             and task.get_name().endswith(f":{b.node_id}")]
    assert len(loops) == 3
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)

    await alice.until({"alice": [item("alice", name="Alice")]}, timeout=20.0)
    assert await a.get_presence("room") == {"alice": [item("alice", name="Alice")]}
    assert await a.count_presence("room") == 1
    left = sorted(key for diff in alice.diffs for key in diff["leaves"])
    assert left == ["b0", "b1", "b2"]


async def test_a_lost_subscription_gives_followers_the_state_again() -> None:
    """Changes published while a node's subscription is down may be lost to pub/sub: once
    it is back, its followers get the state again, then the changes past it (the memory
    hub cuts a subscription as Redis would lose it, deterministically)."""
    hub = MemoryHub()
    config = {**QUIET, "presence_diff_window": 0.01}
    async with (WebSocketConnectionManager(WebSocketConfig(node_id="a", **config),
                                           backend=MemoryBackend(hub)) as a,
                WebSocketConnectionManager(WebSocketConfig(node_id="b", **config),
                                           backend=MemoryBackend(hub)) as b):
        alice = Follower(a, "alice")
        await alice.subscribe("room", {"name": "Alice"})
        await b.connect("bob", FakeSocket("bob"))
        assert hub.cut_subscription("a")
        await b.join_group("bob", "room", presence={"name": "Bob"})
        robert = {"alice": [item("alice", name="Alice")], "bob": [item("bob", name="Robert")]}
        await b.update_presence("bob", "room", {"name": "Robert"})
        await alice.until(robert)
        async with asyncio.timeout(15):
            while not alice.states:  # the state again, once the subscription is back
                frame = await alice.socket.next_json(timeout=15)
                if frame["type"] == "presence_state":
                    alice.states += 1
                    alice.sync.sync_state(frame["presence"])
                else:
                    alice.apply(frame)
        assert alice.sync.list() == robert
        await b.leave_group("bob", "room")
        await alice.until({"alice": [item("alice", name="Alice")]})


async def test_concurrent_subscribes_share_state_reads_and_every_copy_is_exact(
        cluster: Cluster) -> None:
    """A crowd following one channel's presence at once (a reconnect storm) reads the
    state a few times, not once per follower, while members join on another node; each
    follower's copy still ends exact."""
    a, b = cluster("a", presence_diff_window=0.01), cluster("b", presence_diff_window=0.01)
    await started(a, b)
    groups = a._node.ctx.backend.groups
    read = groups.presence_state
    reads = 0

    async def counted(group: str) -> Any:
        nonlocal reads
        reads += 1
        return await read(group)

    groups.presence_state = counted  # type: ignore[method-assign]  # counts the reads

    @a.on_subscribe
    def allow(request: SubscribeRequest) -> dict[str, Any] | None:
        return {"name": request.client_id}

    followers = [Follower(a, f"f{n}") for n in range(30)]
    for follower in followers:
        await a.connect(follower.client_id, follower.socket)
    channels = a._node.sessions.channels

    async def subscribe(follower: Follower) -> None:
        conn = a.get_connection(follower.client_id)
        assert conn is not None
        frames = await channels.subscribe(conn, ChannelRequest(1, "room", None, presence=True))
        assert isinstance(frames, list)
        state = json.loads(frames[1])
        assert state["type"] == "presence_state"
        follower.sync.sync_state(state["presence"])
        for frame in frames[2:]:
            follower.apply(json.loads(frame))

    async def members_join_on_b() -> None:
        for n in range(5):
            await b.connect(f"b{n}", FakeSocket(f"b{n}"))
            await b.join_group(f"b{n}", "room", presence={"name": f"b{n}"})

    await asyncio.gather(*(subscribe(f) for f in followers), members_join_on_b())
    everyone = {name: [item(name, name=name)]
                for name in [*(f.client_id for f in followers), *(f"b{n}" for n in range(5))]}
    for follower in followers:
        await follower.until(everyone)
    assert 1 <= reads < len(followers)


async def test_a_failed_shared_read_fails_each_waiter_and_the_next_read_is_fresh() -> None:
    async with WebSocketConnectionManager(WebSocketConfig(**QUIET)) as manager:
        watch = manager._node.sessions.channels._watch
        groups = manager._node.ctx.backend.groups
        read = groups.presence_state
        reading, gate = asyncio.Event(), asyncio.Event()
        calls = 0

        async def failing_once(group: str) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                reading.set()
                await gate.wait()
                raise BackendUnavailable("redis went away")
            return await read(group)

        groups.presence_state = failing_once  # type: ignore[method-assign]
        first = asyncio.create_task(watch.read_state("room"))  # the read being made
        await reading.wait()
        waiting = [asyncio.create_task(watch.read_state("room")) for _ in range(3)]
        await asyncio.sleep(0)  # one loop turn: the three ask (tasks start in order)
        assert not any(task.done() for task in waiting)
        gate.set()
        with pytest.raises(BackendUnavailable, match="redis went away"):
            await first
        # those that asked meanwhile share the next read, which succeeds
        outcomes = await asyncio.gather(*waiting)
        assert [version for version, _ in outcomes] == [0, 0, 0]
        assert calls == 2
        assert watch._reads == {}  # nothing kept once nobody waits


async def test_waiters_of_a_read_are_told_when_the_node_stops() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    await manager.start()
    watch = manager._node.sessions.channels._watch
    groups = manager._node.ctx.backend.groups
    reading, never = asyncio.Event(), asyncio.Event()

    async def hangs(group: str) -> Any:
        reading.set()  # (the three asked before the reading task began)
        await never.wait()

    groups.presence_state = hangs  # type: ignore[method-assign]
    waiting = [asyncio.create_task(watch.read_state("room")) for _ in range(3)]
    await reading.wait()
    await manager.graceful_shutdown(timeout=1.0)
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, BackendUnavailable) for outcome in outcomes), outcomes
