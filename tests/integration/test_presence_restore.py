"""Presence after the store lost it: when Redis restarts empty (or the store took a node
for dead and ended its clients' memberships), each node gives back its clients'
memberships together with their presence entries (as they last were, whichever node wrote
them), and a client following the group's presence ends with the state it had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from stabilizer import (
    BackendUnavailable,
    CloseCode,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.conftest import ManagerFactory
from tests.integration.test_groups_history import resume_on
from tests.integration.test_presence import Follower, item
from tests.integration.test_redis_chaos import eventually
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
Nodes = Callable[..., WebSocketConnectionManager]


@pytest.fixture
async def nodes(private_redis: RedisServer, namespace: str) -> AsyncIterator[Nodes]:
    made: list[WebSocketConnectionManager] = []

    def node(node_id: str, **settings: Any) -> WebSocketConnectionManager:
        manager = WebSocketConnectionManager(WebSocketConfig(
            redis_url=private_redis.url, namespace=namespace, node_id=node_id, node_ttl=1.0,
            op_timeout=0.5, presence_diff_window=0.01, **QUIET, **settings,
        ))
        made.append(manager)
        return manager

    yield node
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


async def answers(query: Callable[[], Awaitable[Any]], expected: object) -> bool:
    try:
        return bool(await query() == expected)
    except BackendUnavailable:
        return False


@pytest.mark.redis
@pytest.mark.slow
async def test_an_empty_restart_gives_back_presence_with_the_memberships(
    private_redis: RedisServer, nodes: Nodes
) -> None:
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    alice = Follower(a, "alice")
    await alice.subscribe("room", {"name": "Alice"})  # a local join with metadata
    for name in ("bob", "carol", "dave"):
        await b.connect(name, FakeSocket(name))
    await b.join_group("bob", "room", presence={"name": "Bob"})  # on its own node
    await a.join_group("carol", "room", presence={"name": "Carol"})  # from another node
    await a.update_presence("bob", "room", {"name": "Robert"})  # from another node
    await b.join_group("dave", "room")  # a member without metadata
    before = {"alice": [item("alice", name="Alice")], "bob": [item("bob", name="Robert")],
              "carol": [item("carol", name="Carol")]}
    await alice.until(before)
    assert await a.get_presence("room") == before

    private_redis.stop(kill=True)
    private_redis.start()  # empty: every key is gone

    await eventually(lambda: answers(lambda: a.get_group_members("room"),
                                     ["alice", "bob", "carol", "dave"]))
    await eventually(lambda: answers(lambda: b.get_presence("room"), before))
    assert await a.count_presence("room") == 3
    # the follower's copy still shows `before`; a change after the restore must reach it on
    # top of the state its node sends again (read before or after the entries came back:
    # the restored ones past it follow as joins), so it ends with exactly this
    await b.update_presence("dave", "room", {"name": "Dave"})
    await alice.until({**before, "dave": [item("dave", name="Dave")]})
    assert alice.states >= 1  # its node lost the subscription: the state came again


@pytest.mark.redis
@pytest.mark.slow
async def test_a_remote_join_into_a_group_its_node_did_not_follow_is_given_back(
    private_redis: RedisServer, nodes: Nodes
) -> None:
    """The join's change is published before the client's node follows the group (it
    starts to when it carries the join out), so that node reads the entry instead."""
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    await b.connect("carol", FakeSocket("carol"))
    await a.join_group("carol", "room", presence={"name": "Carol"})
    conn = b.get_connection("carol")
    assert conn is not None
    await eventually(lambda: _listed(conn.groups, "room"))
    expected = {"carol": [item("carol", name="Carol")]}
    assert await a.get_presence("room") == expected

    private_redis.stop(kill=True)
    private_redis.start()  # empty: every key is gone

    await eventually(lambda: answers(lambda: a.get_group_members("room"), ["carol"]))
    await eventually(lambda: answers(lambda: a.get_presence("room"), expected))


async def _listed(groups: frozenset[str], group: str) -> bool:
    return group in groups


@pytest.mark.redis
@pytest.mark.slow
async def test_a_session_resumed_on_another_node_is_given_back_with_its_entry(
    private_redis: RedisServer, nodes: Nodes
) -> None:
    """The entry was set before the resuming connection began, on another node: the node
    it resumes on reads it."""
    a, b = nodes("a", **HISTORY), nodes("b", **HISTORY)
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("alice"))
    await a.join_group("alice", "room", presence={"name": "Alice"})
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    await resume_on(b, "alice", {})
    expected = {"alice": [item("alice", name="Alice")]}
    assert await b.get_presence("room") == expected  # kept with the session

    private_redis.stop(kill=True)
    private_redis.start()  # empty: every key is gone

    await eventually(lambda: answers(lambda: a.get_group_members("room"), ["alice"]))
    await eventually(lambda: answers(lambda: a.get_presence("room"), expected))


async def test_a_node_taken_for_dead_gives_back_the_entries_the_sweep_removed(
    make_manager: ManagerFactory,
) -> None:
    """On a memory hub: node b is reaped while alive and its clients' memberships are
    swept (their removals reach b, which still follows the group); when b registers again
    it gives back the memberships with the entries they had."""
    hub = MemoryHub()
    a, b = (make_manager(WebSocketConfig(node_id=name, node_ttl=1.0, presence_diff_window=0.01,
                                         **QUIET),  # type: ignore[arg-type]
                         backend=MemoryBackend(hub))
            for name in "ab")
    await a.start()
    await b.start()
    alice = Follower(a, "alice")
    await alice.subscribe("room", {"name": "Alice"})
    await b.connect("bob", FakeSocket("bob"))
    await b.join_group("bob", "room", presence={"name": "Bob"})
    before = {"alice": [item("alice", name="Alice")], "bob": [item("bob", name="Bob")]}
    await alice.until(before)

    backend = a._node.ctx.backend
    hub.node_deadlines["b"] = 0.0  # b missed its deadline: a reaps it at once
    assert (await backend.liveness.keepalive(1.0)).reaped == ("b",)
    assert await backend.sessions.sweep() == ["bob"]  # no session: its memberships end
    await alice.until({"alice": before["alice"]})

    await eventually(lambda: answers(lambda: a.get_presence("room"), before))
    await alice.until(before)
    assert await a.get_group_members("room") == ["alice", "bob"]
