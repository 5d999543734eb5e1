"""Round trips counted by Redis itself: what the README says each operation costs.

"One round trip per operation. Connect, disconnect and send_to_client are one Lua script
each; a broadcast is one PUBLISH ... Concurrent send_to_client calls made in the same
event-loop turn share one pipelined round trip, and at most redis_pool_size Redis calls are
in flight." Every count here comes from the servers (MONITOR and their read counter, see
tests/support/redis_commands.py), on a dedicated Redis and on a dedicated three-master
Cluster, never from the library's own counters.

Each measured operation runs once before its window: the first call of a script on a server
costs three round trips (EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA again).

On a Cluster the keys are spread (each group and each client in its own slot): what one
script did across a client's session, its groups and presence takes a few steps there, and
the tests say which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.integration.test_groups_history import subscribers
from tests.support.fakes import FakeSocket, FakeWebSocket
from tests.support.redis_commands import CommandWatch, Seen, settled
from tests.support.redis_server import RedisClusterServers, RedisServer

pytestmark = pytest.mark.redis

#: No maintenance inside a window: one pass at start, the next an hour later.
QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0, "node_ttl": 3600.0,
         "memory_check_interval": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 600.0, "session_ttl": 600.0}


@dataclass(frozen=True)
class Store:
    """Where the managers keep their state: one Redis, or every master of a Cluster."""

    kind: str
    servers: list[RedisServer]
    options: dict[str, object]

    @property
    def publish(self) -> str:
        """The command a broadcast costs: sharded pub/sub on a Cluster."""
        return "SPUBLISH" if self.kind == "cluster" else "PUBLISH"


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("private_redis")
        return Store("redis", [server], {"redis_url": server.url})
    cluster: RedisClusterServers = request.getfixturevalue("private_cluster")
    return Store("cluster", list(cluster.nodes), {"redis_url": cluster.url,
                                                  "redis_cluster": True})


Node = Callable[..., WebSocketConnectionManager]


@pytest.fixture
def node(store: Store, namespace: str, make_manager: ManagerFactory) -> Node:
    """Build a manager on `store` with this test's namespace."""

    def build(node_id: str, **overrides: Any) -> WebSocketConnectionManager:
        options = {**QUIET, **store.options, "namespace": namespace, "node_id": node_id,
                   **overrides}
        return make_manager(WebSocketConfig(**options))

    return build


@pytest.fixture
async def watch(store: Store) -> AsyncIterator[CommandWatch]:
    async with CommandWatch(store.servers) as commands:
        yield commands


def costs(seen: Seen, round_trips: int, **commands: int) -> None:
    """Assert the exact commands and round trips of a window (a readable failure)."""
    assert (seen.round_trips, seen.names()) == (round_trips, Counter(commands)), seen.describe()


# ----------------------------------------------------------------------------- presence


async def test_connect_and_disconnect_are_one_script_each(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """On a Cluster presence and the client's group set live in different slots: after the
    register, the connect ends whatever groups the client's set lists (a connection without
    history begins with none: a reaped node's late join may have written one), and after
    the unregister, the disconnect ends the client's groups (a join another node wrote
    while the socket closed): one script each that finds none here."""
    a = node("a")
    await settled(a)
    await a.connect("warm-up", FakeSocket())
    await a.disconnect("warm-up")

    async with watch.window() as connect:
        await a.connect("alice", FakeSocket())
    async with watch.window() as disconnect:
        await a.disconnect("alice")

    costs(connect, 2 if store.kind == "cluster" else 1,
          EVALSHA=2 if store.kind == "cluster" else 1)
    costs(disconnect, 2 if store.kind == "cluster" else 1,
          EVALSHA=2 if store.kind == "cluster" else 1)


async def test_connecting_an_id_live_on_another_node_is_still_one_script(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """The kick of the old socket travels inside the register script. On a Cluster the old
    connection's groups are in the client's slot: their end follows (one script when there
    is no group to leave; the presence read that guards it only when there is one)."""
    a, b = node("a"), node("b")
    await settled(a, b)
    await a.connect("warm-up", FakeSocket())
    await b.connect("warm-up", FakeSocket())
    old = FakeSocket("old")
    await a.connect("alice", old)

    async with watch.window() as seen:
        await b.connect("alice", FakeSocket("new"))
        await old.wait_closed()

    if store.kind == "cluster":
        costs(seen, 2, EVALSHA=2)
    else:
        costs(seen, 1, EVALSHA=1)


# ----------------------------------------------------------------------------- delivery


async def test_send_to_a_remote_client_is_one_script_and_to_a_local_one_is_none(
    node: Node, watch: CommandWatch
) -> None:
    a, b = node("a"), node("b")
    await settled(a, b)
    bob, alice = FakeSocket("bob"), FakeSocket("alice")
    await b.connect("bob", bob)
    await a.connect("alice", alice)
    assert await a.send_to_client("bob", "warm-up")
    await bob.next()

    async with watch.window() as remote:
        assert await a.send_to_client("bob", "hi")
        assert await bob.next() == "hi"
    async with watch.window() as local:
        assert await a.send_to_client("alice", "hi")
        assert await alice.next() == "hi"

    costs(remote, 1, EVALSHA=1)
    costs(local, 0)


async def test_broadcast_is_one_publish(store: Store, node: Node, watch: CommandWatch) -> None:
    a, b, c = node("a"), node("b"), node("c")
    await settled(a, b, c)
    socks = [FakeSocket(f"on-{n.node_id}") for n in (a, b, c)]
    for manager, sock in zip((a, b, c), socks, strict=True):
        await manager.connect(sock.name, sock)

    async with watch.window() as seen:
        result = await a.broadcast("everyone")
        for sock in socks:
            assert await sock.next() == "everyone"

    assert result.remote_nodes == 2
    costs(seen, 1, **{store.publish: 1})


async def test_group_send_is_one_publish(store: Store, node: Node, watch: CommandWatch) -> None:
    a, b = node("a"), node("b")
    await settled(a, b)
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    await b.join_group("bob", "room")

    async with watch.window() as seen:
        await a.send_to_group("room", "to the room")
        assert await bob.next() == "to the room"

    costs(seen, 1, **{store.publish: 1})


@pytest.mark.parametrize("settings", [{}, HISTORY], ids=["live", "history"])
async def test_a_remote_join_costs_the_clients_node_a_read_and_following_the_group(
    store: Store, node: Node, watch: CommandWatch, settings: dict[str, Any]
) -> None:
    """The joining node locates the client, writes the join and routes it (an HGET and two
    scripts); the client's node does not take the MEMBERSHIP envelope's word (a change of
    its own may have undone it meanwhile): it reads the client's group set (one SSCAN),
    follows the group, then reads the client's presence entry there (PRESENCE_ENTRIES, one
    script), which was set, or changed, before the node listened to the group's changes,
    so that it can give it back if Redis loses it."""
    a, b = node("a", **settings), node("b", **settings)
    await settled(a, b)
    await a.connect("alice", FakeSocket("alice"))
    await b.join_group("alice", "warm-up")
    async with asyncio.timeout(5.0):  # a bound: node a follows warm-up once it applied it
        while await subscribers(a, "warm-up") != 1:
            await asyncio.sleep(0.01)
    conn = a.get_connection("alice")
    assert conn is not None

    async with watch.window() as seen:
        await b.join_group("alice", "room")
        async with asyncio.timeout(5.0):  # a bound: the envelope is on its way
            while "room" not in conn.groups:
                await asyncio.sleep(0.01)

    if store.kind == "redis":
        costs(seen, 6, HGET=1, EVALSHA=3, SSCAN=1, SUBSCRIBE=1)
        return
    # spread: the client's group set, then the group, then the client's slot again, which
    # checks that the group is still listed there (a leave that ran between the first two
    # steps wins) and, with history, writes the baseline into the session (without it,
    # alongside, the presence read that names the holder, and the claim on a client of
    # another node that leaves the group to the sweep if that node dies mid-close: one
    # ZADD);
    # the route checks the client's group set first; the client's node reads that set
    # (SSCAN), then the entry, one HGET per group (of "warm-up" too, when it reads it
    # again: not counted here). A node's first channel on a shard opens a connection there
    # (HELLO): not counted either.
    room = f"{{{a.config.namespace}:g:room}}:p"
    names = Counter(c.name for c in seen.commands if c.name != "HELLO" and not (
        c.name == "HGET" and c.args[0].startswith(room[:room.index(":g:") + 3])
        and c.args[0] != room))
    expected = (Counter(HGET=3, EVALSHA=4, SISMEMBER=1, SSCAN=1, SSUBSCRIBE=1, ZADD=1)
                if not settings
                else Counter(HGET=2, EVALSHA=4, SISMEMBER=1, SSCAN=1, SSUBSCRIBE=1))
    assert names == expected, seen.describe()


async def test_concurrent_sends_in_one_loop_turn_travel_in_one_pipeline(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    """Ten send_to_client calls started together: the ten scripts reach Redis in one read,
    with no SCRIPT EXISTS probe before it (the scripts were loaded when the node opened)."""
    options = {**QUIET, "redis_url": private_redis.url, "namespace": namespace}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    await settled(a, b)
    socks = [FakeSocket(f"c{i}") for i in range(10)]
    for sock in socks:
        await b.connect(sock.name, sock)
    assert await a.send_to_client("c0", "warm-up")
    await socks[0].next()

    async with CommandWatch([private_redis]) as watch, watch.window() as seen:
        sent = await asyncio.gather(*(a.send_to_client(s.name, "hi") for s in socks))
        for sock in socks:
            assert await sock.next() == "hi"

    assert sent == [True] * 10
    assert seen.names() == Counter(EVALSHA=10), seen.describe()
    assert seen.round_trips == 1, seen.describe()


async def test_pipelined_sends_survive_a_flushed_script_cache(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    """A Redis that restarted has no scripts: pipelined calls answered NOSCRIPT are run
    again, so every send still arrives."""
    options = {**QUIET, "redis_url": private_redis.url, "namespace": namespace}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    await settled(a, b)
    socks = [FakeSocket(f"c{i}") for i in range(10)]
    for sock in socks:
        await b.connect(sock.name, sock)
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    sent = await asyncio.gather(*(a.send_to_client(s.name, "after the flush") for s in socks))
    assert sent == [True] * 10
    for sock in socks:
        assert await sock.next() == "after the flush"


async def sender_and_ten_clients(node: Node) -> tuple[WebSocketConnectionManager,
                                                     list[FakeSocket]]:
    """Node a, and ten clients on node b that a has sent to twice (warm-up: the scripts
    loaded, and as many connections open as a burst of ten takes)."""
    a, b = node("a"), node("b")
    await settled(a, b)
    socks = [FakeSocket(f"c{i}") for i in range(10)]
    for sock in socks:
        await b.connect(sock.name, sock)
    for _ in range(2):
        assert all(await asyncio.gather(*(a.send_to_client(s.name, "x") for s in socks)))
        for sock in socks:
            await sock.next()
    return a, socks


async def test_a_batch_answered_noscript_loads_the_scripts_once_and_is_sent_again_whole(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """After a restart (here a SCRIPT FLUSH) a batch is answered NOSCRIPT call by call. It
    used to run those calls again one by one, each its own round trip (the first also
    loading the script): ten concurrent sends took 13 round trips. Now the scripts are
    loaded once and the calls go again in one batch."""
    a, socks = await sender_and_ten_clients(node)
    for server in store.servers:
        admin = Redis(host="127.0.0.1", port=server.port)
        try:
            await admin.script_flush()
        finally:
            await admin.aclose()

    async with watch.window() as seen:
        sent = await asyncio.gather(*(a.send_to_client(s.name, "hi") for s in socks))

    assert sent == [True] * 10
    for sock in socks:
        assert await sock.next() == "hi"
    assert seen.names()["EVALSHA"] == 20, seen.describe()  # ten answered NOSCRIPT, ten again
    if store.kind == "redis":
        # the batch, the SCRIPT LOADs (one pipeline; Redis may read a large one in more
        # than one read), the batch again: not a round trip per call. (A Cluster loads
        # each script on each master with a call of its own, all at once.)
        assert seen.round_trips < len(socks), seen.describe()


async def test_concurrent_sends_in_one_loop_turn_share_one_round_trip(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """One pipelined round trip, on Redis and on a Cluster (one pipeline per master: the
    routes all read the presence slot here). redis-py's retry is off, so a pipeline is
    never sent twice (README, "What the Redis backend guarantees")."""
    a, socks = await sender_and_ten_clients(node)

    async with watch.window() as seen:
        await asyncio.gather(*(a.send_to_client(s.name, "hi") for s in socks))

    costs(seen, 1, EVALSHA=10)


async def test_concurrent_connects_and_disconnects_share_one_round_trip_each(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """A reconnect storm's registrations made in one loop turn travel in one pipeline, and
    so do its disconnects (on a Cluster too, the presence slot's master's pipeline; there
    each connect and each disconnect then ends the client's groups in the client's slot, a
    second script, none to leave here: those go as one pipeline per master holding the
    clients' slots, all three here, sent concurrently)."""
    a = node("a")
    await settled(a)
    names = [f"c{i}" for i in range(10)]
    for _ in range(2):  # warm-up: scripts loaded, and as many connections as a burst opens
        await asyncio.gather(*(a.connect(name, FakeSocket(name)) for name in names))
        await asyncio.gather(*(a.disconnect(name) for name in names))

    async with watch.window() as connects:
        await asyncio.gather(*(a.connect(name, FakeSocket(name)) for name in names))
    async with watch.window() as disconnects:
        await asyncio.gather(*(a.disconnect(name) for name in names))

    assert sorted(a.get_active_connections()) == []
    if store.kind == "redis":
        costs(connects, 1, EVALSHA=10)
        costs(disconnects, 1, EVALSHA=10)
    else:
        costs(connects, 4, EVALSHA=20)
        costs(disconnects, 4, EVALSHA=20)


async def resume(manager: WebSocketConnectionManager, stack: contextlib.AsyncExitStack,
                 ws: FakeWebSocket, client_id: str, token: str) -> None:
    """Resume `client_id` on `manager` with `token`; its session stays open in `stack`."""
    await stack.enter_async_context(manager.open_session(ws, client_id, token=token))
    assert json.loads(await ws.next())["resumed"] is True
    assert (await ws.next_json())["type"] == "resume"


async def test_with_history_concurrent_resumes_share_their_session_round_trips(
    node: Node, store: Store, watch: CommandWatch
) -> None:
    """Ten clients resume at once on another node: the token checks, registrations, session
    loads, reopenings, history reads and session checks of the ten travel as one pipeline
    per step, so the storm costs the round trips of one resume (on a Cluster: one pipeline
    per master and step, sent concurrently, where the clients' keys are spread over the
    masters). (Nothing was sent to the clients: the store holds nothing of their direct
    streams, so each resume checks that it still holds its session.)"""
    a, b = node("a", **HISTORY), node("b", **HISTORY)
    await settled(a, b)
    for round_ in ("warm-up", "measured"):
        names = [f"{round_}-{i}" for i in range(10)]
        tokens = {}
        for name in names:
            tokens[name] = await leave_with_token(a, name)
        sockets = {name: FakeWebSocket() for name in names}

        async with contextlib.AsyncExitStack() as stack, watch.window() as seen:
            await asyncio.gather(*(resume(b, stack, sockets[name], name, tokens[name])
                                   for name in names))

    if store.kind == "cluster":  # spread: reopening is two scripts each (the presence
        # guard and the away list in the namespace's slot, then the session's)
        assert seen.names() == Counter(EVALSHA=80), seen.describe()
        # the scripted steps share pipelines (one per master); how many depends on which
        # masters the clients' slots fall on (the namespace is random) and on how the
        # ten resumes, answered by different masters, meet at each step. One round trip
        # per call would be 80.
        assert seen.round_trips < 70, seen.describe()
        return
    assert seen.names() == Counter(EVALSHA=70), seen.describe()
    if store.kind == "redis":
        # one pipeline each for the token checks, the registrations, the session loads,
        # the reopenings, each of the two streams' history reads and the session checks
        assert seen.round_trips == 7, seen.describe()
    else:
        assert seen.round_trips == 70, seen.describe()


async def test_a_burst_keeps_at_most_redis_pool_size_calls_in_flight_and_none_fails(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """200 connects at once with redis_pool_size=4: Redis sees at most 4 connections of the
    node issue commands (each call in flight needs its own), and every client is registered
    (the others waited instead of failing)."""
    a = node("a", redis_pool_size=4, op_timeout=10.0)  # waiting never times out on a busy box
    await settled(a)
    await a.connect("warm-up", FakeSocket())

    async with watch.window() as seen:
        await asyncio.gather(*(a.connect(f"c{i}", FakeSocket()) for i in range(200)))

    for server in range(len(store.servers)):
        in_flight = seen.clients(server)
        assert len(in_flight) <= 4, f"{len(in_flight)} connections issued commands"
    # (on a Cluster each connect's group set is read in its client's slot: one more each)
    assert seen.names()["EVALSHA"] == (400 if store.kind == "cluster" else 200), seen.describe()
    assert await a.get_cluster_connection_count() == 201


# ----------------------------------------------------------------------------- resume


async def test_a_resume_is_the_token_check_and_one_script(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """Without history: the token's SET NX script (single use, cluster-wide) + the register
    script (on a Cluster, + the end of the client's groups in its slot, as for a connect)."""
    a, b = node("a"), node("b")
    await settled(a, b)
    for client_id in ("warm-up", "alice"):
        token = await leave_with_token(a, client_id)
        ws = FakeWebSocket()
        # the window closes first, the session after it
        async with contextlib.AsyncExitStack() as session, watch.window() as seen:
            await session.enter_async_context(b.open_session(ws, client_id, token=token))
            assert json.loads(await ws.next())["resumed"] is True

    if store.kind == "cluster":
        costs(seen, 3, EVALSHA=3)
    else:
        costs(seen, 2, EVALSHA=2)


async def leave_with_token(manager: WebSocketConnectionManager, client_id: str) -> str:
    """Open a session, keep its reconnect token, and let the client go away."""
    ws = FakeWebSocket()
    async with manager.open_session(ws, client_id) as session:
        welcome = json.loads(await ws.next())
        ws.client_leaves()
        assert await session.receive() is None
    return str(welcome["token"])


# ----------------------------------------------------------------------------- history


async def test_with_history_each_message_is_one_script_even_to_a_local_client(
    node: Node, watch: CommandWatch
) -> None:
    """Sequencing (offset, stream append, publish) is one script per message."""
    a, b = node("a", **HISTORY), node("b", **HISTORY)
    await settled(a, b)
    bob, alice = FakeSocket("bob"), FakeSocket("alice")
    await b.connect("bob", bob)
    await a.connect("alice", alice)
    await b.join_group("bob", "room")
    await a.broadcast("warm-up")
    await a.send_to_group("room", "warm-up")
    await a.send_to_client("bob", "warm-up")
    for _ in range(3):
        await bob.next_json()
    await alice.next_json()

    async with watch.window() as broadcast:
        await a.broadcast("all")
        assert (await bob.next_json())["data"] == "all"
        assert (await alice.next_json())["data"] == "all"
    async with watch.window() as group:
        await a.send_to_group("room", "room")
        assert (await bob.next_json())["data"] == "room"
    async with watch.window() as remote:
        assert await a.send_to_client("bob", "direct")
        assert (await bob.next_json())["data"] == "direct"
    async with watch.window() as local:
        assert await a.send_to_client("alice", "direct")
        assert (await alice.next_json())["data"] == "direct"

    for seen in (broadcast, group, remote, local):
        costs(seen, 1, EVALSHA=1)


async def test_with_history_a_disconnect_costs_one_more_round_trip(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """Unregister, then end the session (a normal closure) or suspend it (a drop). On a
    Cluster the session is in the client's slot: the presence read that guards the end
    comes first."""
    a = node("a", **HISTORY)
    await settled(a)
    for client_id in ("warm-up", "alice"):
        await a.connect(client_id, FakeSocket())
        async with watch.window() as seen:
            await a.disconnect(client_id)

    if store.kind == "cluster":
        costs(seen, 3, EVALSHA=2, HGET=1)
    else:
        costs(seen, 2, EVALSHA=2)


async def test_with_history_a_connect_costs_one_more_round_trip(
    store: Store, node: Node, watch: CommandWatch
) -> None:
    """Register, then open the session (on a Cluster: read the streams' baselines in the
    namespace's slot, then replace the session in the client's)."""
    a = node("a", **HISTORY)
    await settled(a)
    for client_id in ("warm-up", "alice"):
        async with watch.window() as seen:
            await a.connect(client_id, FakeSocket())

    steps = 3 if store.kind == "cluster" else 2
    costs(seen, steps, EVALSHA=steps)


@pytest.mark.parametrize("direct", [True, False], ids=["streams-held", "one-absent"])
async def test_with_history_a_resume_costs_six_round_trips(
    store: Store, node: Node, watch: CommandWatch, direct: bool
) -> None:
    """The count today, the guard for the redesign: SET NX (the token), register, load the
    session, reopen it, and one history read per stream the client follows (here "all" and
    its own "c:alice"); what it missed then arrives with no further round trip. When the
    store holds nothing of one of them (alice was never sent a direct message), one more:
    the store must still hold the session (one that lost it lost the streams too)."""
    a, b = node("a", **HISTORY), node("b", **HISTORY)
    await settled(a, b)
    for client_id in ("warm-up", "alice"):
        token = await leave_with_token(a, client_id)
        await a.broadcast(f"missed by {client_id}")
        if direct:
            assert await a.send_to_client(client_id, f"sent to {client_id}")
        ws = FakeWebSocket()
        # the window closes first, the session after it
        async with contextlib.AsyncExitStack() as session, watch.window() as seen:
            await session.enter_async_context(b.open_session(ws, client_id, token=token))
            assert json.loads(await ws.next())["resumed"] is True
            assert (await ws.next_json())["data"] == f"missed by {client_id}"
            if direct:
                assert (await ws.next_json())["data"] == f"sent to {client_id}"
            assert (await ws.next_json())["type"] == "resume"

    checked = 0 if direct else 1  # SESSION_HOLDER
    if store.kind == "cluster":  # spread: reopening is two steps (the presence guard and
        # the away list in the namespace's slot, then the session)
        costs(seen, 7 + checked, EVALSHA=7 + checked)
    else:
        costs(seen, 6 + checked, EVALSHA=6 + checked)
