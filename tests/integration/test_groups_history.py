"""Groups, history, resume and hooks across several managers (memory hub and real Redis)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stabilizer import CloseCode, MemoryBackend, WebSocketConnectionManager
from stabilizer.backends.base import SessionState
from stabilizer.backends.redis import RedisBackend
from stabilizer.errors import BackendUnavailable
from stabilizer.results import ClusterEvent, ConnectionEvent
from tests.integration.test_cluster import Cluster, cluster, started, unwrapped
from tests.support.fakes import FakeSocket, FakeWebSocket

__all__ = ["cluster"]

HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}


async def messages(sock: FakeSocket, count: int) -> list[Any]:
    """The next `count` application frames (history frames unwrapped to their data)."""
    got = []
    while len(got) < count:
        frame = await sock.next_json()
        got.append(frame)
    return got


async def subscribers(manager: WebSocketConnectionManager, group: str) -> int:
    """How many nodes receive `group`'s channel (observable accounting)."""
    backend = manager.backend
    if isinstance(backend, MemoryBackend):
        return len(backend.hub.group_nodes.get(group, ()))
    assert isinstance(backend, RedisBackend)
    channel = backend.keys.group_channel(group)
    if manager.config.redis_cluster:  # sharded channel: ask the shard that owns its slot
        cluster = RedisCluster.from_url(manager.config.redis_url or "")
        try:
            await cluster.initialize()
            node = cluster.get_node_from_key(channel)
            assert node is not None
            shard = Redis(host=node.host, port=node.port)
            _, count = await shard.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            await shard.aclose()
            return int(count)
        finally:
            await cluster.aclose()
    client = Redis.from_url(manager.config.redis_url or "")
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
async def test_group_messages_reach_members_on_every_node(
    cluster: Cluster, history: bool
) -> None:
    options = HISTORY if history else {}
    a, b, c = cluster("a", **options), cluster("b", **options), cluster("c", **options)
    await started(a, b, c)
    socks = {name: FakeSocket(name) for name in ("m1", "m2", "m3", "outsider")}
    await a.connect("m1", socks["m1"])
    await b.connect("m2", socks["m2"])
    await b.connect("m3", socks["m3"])
    await c.connect("outsider", socks["outsider"])
    for member in ("m1", "m2", "m3"):
        await a.join_group(member, "room:α")  # m2 and m3 live on b: routed there

    async with asyncio.timeout(5):
        while await subscribers(b, "room:α") != 2:  # a and b subscribed, c not
            await asyncio.sleep(0.02)
    result = await c.send_to_group("room:α", {"hi": "room"}, exclude_client="m3")
    assert result.remote_nodes == 2
    assert unwrapped(await socks["m1"].next_json()) == {"hi": "room"}
    assert unwrapped(await socks["m2"].next_json()) == {"hi": "room"}
    assert await c.get_group_members("room:α") == ["m1", "m2", "m3"]
    assert await b.get_client_groups("m2") == ["room:α"]
    # a sentinel on the group's own stream comes after the message: m3 (excluded, on b,
    # not on the sending node c) gets it first, so the group message never reached it
    await c.send_to_group("room:α", {"sentinel": True})
    assert unwrapped(await socks["m3"].next_json()) == {"sentinel": True}
    await c.broadcast({"sentinel": "all"})  # the outsider got nothing before this
    assert unwrapped(await socks["outsider"].next_json()) == {"sentinel": "all"}


async def test_a_node_unsubscribes_when_its_last_member_leaves(cluster: Cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    await a.connect("x", FakeSocket())
    await a.connect("y", FakeSocket())
    await a.join_group("x", "room")
    await a.join_group("y", "room")
    assert await subscribers(a, "room") == 1
    await a.leave_group("x", "room")
    assert await subscribers(a, "room") == 1
    await a.disconnect("y")  # the last local member goes: no more traffic for this node
    async with asyncio.timeout(5):
        while await subscribers(a, "room") != 0:
            await asyncio.sleep(0.02)
    assert await b.get_group_members("room") == []  # no history: leaving on disconnect


async def test_join_unknown_client_raises(cluster: Cluster) -> None:
    from stabilizer import ConnectionNotFoundError

    a = cluster("a")
    await started(a)
    with pytest.raises(ConnectionNotFoundError):
        await a.join_group("ghost", "room")
    with pytest.raises(ValueError, match="group"):
        await a.join_group("ghost", "")


async def test_history_frames_carry_consecutive_positions(cluster: Cluster) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    on_a, on_b = FakeSocket("on-a"), FakeSocket("on-b")
    await a.connect("on-a", on_a)
    await b.connect("on-b", on_b)
    for i in range(3):
        result = await (a if i % 2 else b).broadcast({"i": i})
        assert result.offset == i + 1
    for sock in (on_a, on_b):
        frames = await messages(sock, 3)
        assert [f["offset"] for f in frames] == [1, 2, 3]
        assert [json.loads(f["data"]) for f in frames] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert {f["stream"] for f in frames} == {"all"}
        assert len({f["epoch"] for f in frames}) == 1


async def resume_on(
    manager: WebSocketConnectionManager, client_id: str, positions: dict[str, tuple[int, str]]
) -> tuple[FakeWebSocket, tuple[bool, int, list[str]]]:
    """Resume `client_id` with a token and `positions`, as a returning client does; return
    its socket and what the resume frame says (read without consuming any frame)."""
    sock = FakeWebSocket(client_id)
    session = manager.open_session(
        sock, client_id, token=manager.generate_reconnect_token(client_id),
        positions=json.dumps({stream: list(at) for stream, at in positions.items()}),
        welcome=False)
    await session.__aenter__()
    assert session.refused is None
    ended = next(json.loads(frame) for frame in sock.sent
                 if isinstance(frame, str) and frame.startswith('{"type":"resume"'))
    return sock, (ended["recovered"], ended["replayed"], ended["failed"])


@pytest.mark.parametrize("same_node", [True, False])
async def test_a_resumed_client_gets_every_missed_message_once_in_order(
    cluster: Cluster, same_node: bool
) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    await a.set_user_data("alice", "name", "Alice")
    await b.broadcast("before")
    seen = await alice.next_json()
    positions = {"all": (seen["offset"], seen["epoch"])}
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")

    await b.broadcast("missed-1")
    await b.send_to_group("room", "missed-2")
    await b.send_to_client("alice", "missed-3")  # kept for the resumable session

    target = a if same_node else b
    sock, (recovered, replayed, failed) = await resume_on(target, "alice", positions)
    assert (recovered, replayed, failed) == (True, 3, [])
    frames = await messages(sock, 4)
    assert sorted(f["data"] for f in frames[:3]) == ["missed-1", "missed-2", "missed-3"]
    assert frames[3]["type"] == "resume"
    await b.broadcast("live")
    assert (await sock.next_json())["data"] == "live"
    assert await target.get_user_data("alice", "name") == "Alice"
    assert await target.get_group_members("room") == ["alice"]
    await b.send_to_group("room", "group-live")
    assert (await sock.next_json())["data"] == "group-live"


async def test_resume_after_history_was_trimmed_says_recovery_failed(cluster: Cluster) -> None:
    small = {**HISTORY, "history_size": 3}
    a, b = cluster("a", **small), cluster("b", **small)
    await started(a, b)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await b.broadcast("seen")
    seen = await alice.next_json()
    await a.disconnect("alice", code=CloseCode.GOING_AWAY)
    for i in range(5):  # more than history_size while alice is away
        await b.broadcast(f"lost-{i}")
    sock, (recovered, replayed, failed) = await resume_on(
        b, "alice", {"all": (seen["offset"], seen["epoch"])})
    assert (recovered, replayed, failed) == (False, 0, ["all"])
    final = await sock.next_json()
    assert final == {"type": "resume", "recovered": False, "replayed": 0, "failed": ["all"]}


async def test_resume_without_a_live_session_fails_explicitly(cluster: Cluster) -> None:
    a = cluster("a", **HISTORY)
    await started(a)
    sock, (recovered, _, failed) = await resume_on(a, "stranger", {"all": (3, "old-epoch")})
    assert recovered is False
    assert failed == ["all"]
    assert (await sock.next_json())["recovered"] is False


async def test_positions_of_foreign_streams_are_ignored(cluster: Cluster) -> None:
    a = cluster("a", **HISTORY)
    await started(a)
    insider = FakeSocket()
    await a.connect("insider", insider)
    await a.join_group("insider", "secret")
    await a.send_to_group("secret", "classified")
    epoch = (await insider.next_json())["epoch"]
    await a.connect("spy", FakeSocket())
    await a.disconnect("spy", code=CloseCode.GOING_AWAY)
    sock, (_, replayed, _) = await resume_on(a, "spy", {"g:secret": (0, epoch)})
    assert replayed == 0
    assert (await sock.next_json())["type"] == "resume"
    assert "classified" not in sock.texts()


async def test_a_remote_join_that_lands_after_its_clients_fresh_session_is_not_applied(
    make_manager: Any,
) -> None:
    """Issue 16, seed 361383291, in the order tests/faults/test_settle.py does not pin: a
    join through another node, written while alice's older connection held her session,
    reached her node only after she connected there again and her fresh session ended
    every earlier membership. Her node joined the newer connection to a group the backend
    no longer listed for her."""
    from stabilizer import MemoryHub, WebSocketConfig

    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **HISTORY), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **HISTORY), backend=MemoryBackend(hub))
    await started(a, b)
    await a.connect("alice", FakeSocket("older"))
    deliver = hub.deliver
    held: list[bytes] = []

    def hold_for_a(node_id: str, envelope: bytes) -> bool:
        if node_id != "a":
            return deliver(node_id, envelope)
        held.append(envelope)  # on its way, as behind a lagging listener
        return True

    hub.deliver = hold_for_a  # type: ignore[method-assign]
    await b.join_group("alice", "room")
    newer = FakeSocket("newer")
    await a.connect("alice", newer)  # a fresh session: every earlier membership ends
    hub.deliver = deliver  # type: ignore[method-assign]
    for envelope in held:
        assert deliver("a", envelope)
    await b.join_group("alice", "hall")  # carried out after the held join was decided
    conn = a.get_connection("alice")
    assert conn is not None
    async with asyncio.timeout(2.0):
        while "hall" not in conn.groups:
            await asyncio.sleep(0.01)
    assert await b.get_group_members("room") == []
    assert sorted(conn.groups) == ["hall"], (
        "alice's newer connection joined a group the backend no longer lists for her")


async def test_a_resume_that_finds_no_session_hands_over_no_group_it_ended(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16, seed 361383291: alice's session was gone (Redis restarted empty; the
    resync gave her memberships back, not her session) when she resumed on the node of her
    older socket. That socket's groups were handed over to the newer one, a settle from
    the backend, while the resume opened a fresh session, which ended them: a settle that
    read the backend before the fresh session began joined her newer socket to them."""
    from stabilizer import MemoryHub, WebSocketConfig

    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **HISTORY), backend=MemoryBackend(hub))
    await started(a)
    await a.connect("alice", FakeSocket("older"))
    await a.join_group("alice", "room")
    del hub.sessions["alice"]  # lost with the restart; her membership was given back
    load = a.backend.sessions.load

    async def round_trip(client_id: str) -> SessionState | None:
        for _ in range(10):  # the hand-over's settle runs meanwhile, or waits its turn
            await asyncio.sleep(0)
        return await load(client_id)

    monkeypatch.setattr(a.backend.sessions, "load", round_trip)
    _, (recovered, _, _) = await resume_on(a, "alice", {})
    assert not recovered
    await a.join_group("alice", "hall")  # after the hand-over in the client's turns
    conn = a.get_connection("alice")
    assert conn is not None
    assert await a.get_group_members("room") == []
    assert sorted(conn.groups) == ["hall"], (
        "the fresh session ended alice's membership of room, but her newer socket joined it")


async def bob_on_b(make_manager: Any) -> tuple[Any, Any, Any, FakeSocket]:
    """Two started nodes with history on one memory hub, and bob's socket on node b:
    (hub, a, b, bob's socket)."""
    from stabilizer import MemoryHub, WebSocketConfig

    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **HISTORY), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **HISTORY), backend=MemoryBackend(hub))
    await started(a, b)
    sock = FakeSocket()
    await b.connect("bob", sock)
    return hub, a, b, sock


async def test_a_node_fills_a_gap_in_a_stream_from_history(make_manager: Any) -> None:
    """Pub/sub is at-most-once: a node that misses a message recovers it from history."""
    hub, a, b, sock = await bob_on_b(make_manager)
    deliver = hub.deliver
    dropped = []

    def lossy(node_id: str, envelope: bytes) -> bool:
        if node_id == "b" and not dropped and b"lost" in envelope:
            dropped.append(envelope)
            return True  # swallowed, as a dropped subscription would
        return deliver(node_id, envelope)

    hub.deliver = lossy  # type: ignore[method-assign]
    for text in ("first", "lost", "third"):
        await a.broadcast(text)
    frames = await messages(sock, 3)
    assert [f["data"] for f in frames] == ["first", "lost", "third"]
    assert [f["offset"] for f in frames] == [1, 2, 3]
    assert b.stats.gaps_filled == 1


async def test_a_gap_the_history_no_longer_holds_tells_the_clients_to_resync(
    make_manager: Any,
) -> None:
    """Seed 984503690: a node missed offset 2 of a stream (its subscription was down), then
    the store lost the stream (Redis restarted empty) before the node read it back. The
    read found no stream, which reads as "nothing to recover", and offset 3 went out as if
    nothing was missing. A gap that the history cannot fill is a loss: the clients are
    told (recovered: false) before the message after it."""
    hub, a, _, sock = await bob_on_b(make_manager)
    deliver = hub.deliver

    def lossy(node_id: str, envelope: bytes) -> bool:
        if node_id == "b" and b"lost" in envelope:
            return True  # swallowed, as a dropped subscription would
        if node_id == "b" and b"third" in envelope:
            hub.streams.clear()  # the store restarted empty before b reads the gap back
        return deliver(node_id, envelope)

    hub.deliver = lossy  # type: ignore[method-assign]
    for text in ("first", "lost", "third"):
        await a.broadcast(text)
    first = await sock.next_json()
    assert (first["data"], first["offset"]) == ("first", 1)
    told = await sock.next_json()
    assert (told["type"], told["recovered"], told["failed"]) == ("resume", False, ["all"])
    third = await sock.next_json()
    assert (third["data"], third["offset"]) == ("third", 3)


async def test_hooks_fire_exactly_once_per_connect_and_disconnect(cluster: Cluster) -> None:
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    events: list[tuple[str, str, int | None]] = []
    six_seen = asyncio.Event()

    def record(event: tuple[str, str, int | None]) -> None:
        events.append(event)
        if len(events) == 6:
            six_seen.set()

    @a.on_connect
    def connected(event: ConnectionEvent) -> None:
        record(("connect", event.client_id, event.code))

    @a.on_disconnect
    async def disconnected(event: ConnectionEvent) -> None:
        record(("disconnect", event.client_id, event.code))

    first, second = FakeSocket(), FakeSocket()
    await a.connect("x", first)
    await a.connect("x", second)  # replaces the first
    await first.wait_closed()
    await a.connect("y", FakeSocket())
    await b.connect("y", FakeSocket())  # y moves to another node: kicked here
    await a.disconnect("x")
    async with asyncio.timeout(5):  # the kicked and replaced sockets close in the background
        await six_seen.wait()
    await a.graceful_shutdown(timeout=1)
    assert sorted(events) == sorted([
        ("connect", "x", None), ("connect", "x", None), ("connect", "y", None),
        ("disconnect", "x", CloseCode.REPLACED), ("disconnect", "y", CloseCode.REPLACED),
        ("disconnect", "x", CloseCode.NORMAL),
    ])


async def test_cluster_events_reach_every_node(cluster: Cluster) -> None:
    a, b = cluster("a", cluster_events=True), cluster("b", cluster_events=True)
    await started(a, b)
    seen: list[ClusterEvent] = []
    got_all = asyncio.Event()

    def listener(event: ClusterEvent) -> None:
        seen.append(event)
        if len(seen) == 4:
            got_all.set()

    b.on_cluster_event(listener)
    await a.connect("alice", FakeSocket())
    await a.join_group("alice", "room")
    await a.leave_group("alice", "room")
    await a.disconnect("alice")
    async with asyncio.timeout(5):
        await got_all.wait()
    assert [(e.event, e.client_id, e.group, e.node_id) for e in seen] == [
        ("connect", "alice", None, "a"), ("join", "alice", "room", "a"),
        ("leave", "alice", "room", "a"), ("disconnect", "alice", None, "a"),
    ]


async def test_a_remote_join_does_not_stall_the_owner_nodes_listener(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Subscribing waits for a confirmation only the listener reads: a join routed to the
    owner node must not run inside that listener (it stalled it for op_timeout)."""
    a, b = cluster("a", op_timeout=5.0), cluster("b", op_timeout=5.0)
    await started(a, b)
    sock = FakeSocket()
    await b.connect("bob", sock)
    await a.join_group("bob", "fresh-room")  # b has no member yet: it must subscribe
    await a.broadcast("right after")
    await sock.expect("right after")
    async with asyncio.timeout(10):
        while await subscribers(b, "fresh-room") != 1:
            await asyncio.sleep(0.02)
    assert (await a.send_to_group("fresh-room", "hello room")).remote_nodes == 1
    await sock.expect("hello room")
    assert "not subscribed yet" not in caplog.text


async def test_a_node_catches_up_a_stream_whose_last_message_it_missed(
    make_manager: Any,
) -> None:
    """No later message reveals a gap at the end of a stream: catching up after a
    resubscription must."""
    from stabilizer import MemoryHub, WebSocketConfig

    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **HISTORY), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **HISTORY), backend=MemoryBackend(hub))
    await started(a, b)
    sock = FakeSocket()
    await b.connect("bob", sock)
    await a.broadcast("first")
    assert (await sock.next_json())["data"] == "first"
    deliver = hub.deliver
    hub.deliver = lambda node, raw: True if node == "b" else deliver(node, raw)  # type: ignore[method-assign]
    await a.broadcast("missed while unsubscribed")
    hub.deliver = deliver  # type: ignore[method-assign]
    assert hub.cut_subscription("b")  # b's listener resubscribes, then catches up
    frame = await sock.next_json()
    assert (frame["data"], frame["offset"]) == ("missed while unsubscribed", 2)
    assert hub.cut_subscription("b")  # a second catch-up delivers nothing twice
    await a.broadcast("third")
    assert (await sock.next_json())["offset"] == 3


@pytest.mark.redis
async def test_killed_subscription_is_restored_and_nothing_is_missed(
    redis_url: str, namespace: str, make_manager: Any,
) -> None:
    from stabilizer import WebSocketConfig

    options = {"redis_url": redis_url, "namespace": namespace, **HISTORY}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    await started(a, b)
    sock = FakeSocket()
    await b.connect("bob", sock)
    await a.broadcast("before")
    assert (await sock.next_json())["data"] == "before"
    raw = Redis.from_url(redis_url)
    try:
        await raw.client_kill_filter(_type="pubsub")  # every node's subscription drops
    finally:
        await raw.aclose()
    for i in range(3):
        await a.broadcast(f"during-{i}")
    frames = [await sock.next_json(timeout=15) for _ in range(3)]
    assert [f["data"] for f in frames] == ["during-0", "during-1", "during-2"]
    assert [f["offset"] for f in frames] == [2, 3, 4]


async def test_a_resume_whose_session_cannot_be_taken_over_comes_back_later(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session was loaded but its reopen got no answer: the resume said all was
    recovered and the session, never marked live, expired under the connected client.
    Now the connection is closed with 1013 and retry advice, and the client, coming back,
    resumes it."""
    a = cluster("a", **HISTORY)
    await started(a)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    await a.send_to_group("room", "missed")
    sessions = a.backend.sessions
    activate = sessions.activate
    failed: list[str] = []

    async def unanswered_once(client_id: str, **kwargs: Any) -> Any:
        if not kwargs.get("fresh") and not failed:
            failed.append(client_id)
            raise BackendUnavailable("no answer in time")
        return await activate(client_id, **kwargs)

    monkeypatch.setattr(sessions, "activate", unanswered_once)
    sock = FakeWebSocket("alice")
    session = a.open_session(sock, "alice", token=a.generate_reconnect_token("alice"),
                             welcome=False)
    await session.__aenter__()
    code, reason = await sock.wait_closed()
    assert code == CloseCode.TRY_AGAIN_LATER
    assert "retry_ms" in (reason or "")
    assert not any(isinstance(f, str) and f.startswith('{"type":"resume"') for f in sock.sent)
    _back, (recovered, replayed, failed_streams) = await resume_on(a, "alice", {})
    assert (recovered, replayed, failed_streams) == (True, 1, [])
    assert await a.get_group_members("room") == ["alice"]


async def test_remote_nodes_of_a_sequenced_group_message_counts_only_other_nodes(
    cluster: Cluster,
) -> None:
    a, b, c = cluster("a", **HISTORY), cluster("b", **HISTORY), cluster("c", **HISTORY)
    await started(a, b, c)
    await a.connect("on-a", FakeSocket("on-a"))
    await b.connect("on-b", FakeSocket("on-b"))
    for member in ("on-a", "on-b"):
        await a.join_group(member, "room")
    async with asyncio.timeout(5):
        while await subscribers(a, "room") != 2:
            await asyncio.sleep(0.02)
    # c has no member, so both receiving nodes are other nodes; a is one of the two
    assert (await c.send_to_group("room", "from c")).remote_nodes == 2
    assert (await a.send_to_group("room", "from a")).remote_nodes == 1
