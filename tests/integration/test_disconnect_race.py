"""A remote join written while its client is disconnecting (no history) does not outlive
the client: found by the fault checker (seed 1565161123). The join read the client's
presence before the closing node removed it; the closing node, whose socket had no groups,
then ended nothing, and the group kept the client for good.

Where presence and the client's group set share one slot (the memory backend, Redis with
one presence bucket and the namespace layout), the unregister ends the client's memberships
in the same step. Where they do not (presence buckets, the spread layout), each side writes
and then reads what the other writes: the close ends the client's groups after removing
its presence, from the client's group set, even for a socket that had none; the join reads
the presence after its writes, and puts a client it finds gone on the away list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConnectionManager
from stabilizer.backends.base import Presence
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.spread import SpreadSteps
from stabilizer.config import CloseCode
from stabilizer.errors import BackendUnavailable
from stabilizer.node.tasks import TaskOwner
from tests.integration.test_cluster import Cluster, cluster, started
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest

#: The Redis layouts where presence and a client's group set live in different slots.
SPLIT = {"spread": {"redis_spread_keys": True}, "buckets": {"presence_buckets": 2}}


async def join_while_x_leaves(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect x on a, then disconnect it there with b joining x to the room after a took
    the socket out of its pool, before a removes x's presence: b finds x connected and
    writes the membership, which a's socket never had."""
    await started(a, b)
    await a.connect("x", FakeSocket("x"))
    presence = a.backend.presence
    unregister = presence.unregister
    joined: list[bool] = []

    async def join_first(*args: Any, **kwargs: Any) -> bool:
        await b.join_group("x", "room")
        joined.append(True)
        return await unregister(*args, **kwargs)

    monkeypatch.setattr(presence, "unregister", join_first)
    await a.disconnect("x")
    assert joined == [True]


@pytest.mark.parametrize("cluster", ["memory", "redis"], indirect=True)
async def test_a_join_written_while_its_client_leaves_ends_with_it(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cluster("a"), cluster("b")
    await join_while_x_leaves(a, b, monkeypatch)
    assert await b.get_group_members("room") == []
    assert await a.get_group_members("room") == []


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("layout", sorted(SPLIT))
async def test_a_join_written_while_its_client_leaves_ends_with_it_across_slots(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    a, b = cluster("a", **SPLIT[layout]), cluster("b", **SPLIT[layout])
    await join_while_x_leaves(a, b, monkeypatch)
    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("x") == []


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("layout", sorted(SPLIT))
async def test_an_unregister_whose_reply_is_lost_still_ends_a_join_written_meanwhile(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """As above, but the unregister's reply is lost (it ran): the close cannot tell whether
    the presence went, so it ends the client's groups all the same."""
    a, b = cluster("a", **SPLIT[layout]), cluster("b", **SPLIT[layout])
    unregister = a.backend.presence.unregister

    async def reply_lost(*args: Any, **kwargs: Any) -> bool:
        assert await unregister(*args, **kwargs)
        raise BackendUnavailable("redis unavailable: connection reset (as a lost reply)")

    monkeypatch.setattr(a.backend.presence, "unregister", reply_lost)
    await join_while_x_leaves(a, b, monkeypatch)
    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("x") == []


@pytest.mark.redis
async def test_a_spread_join_whose_client_left_between_its_steps_is_undone(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spread, no sessions: node b's join lists the room in x's group set; then x's whole
    close runs on node a (presence removed, then the end, which finds the room listed and
    drops the set); only then does b's join add x to the room's set. The join's last step
    finds the room no longer listed in x's set: it takes x out of the room again (before,
    it listed the room again and claimed x for the sweep, which took x out later)."""
    tasks = TaskOwner()
    a, b = (RedisBackend(Redis.from_url(redis_url), namespace=namespace, owns_client=True,
                         spread=True) for _ in range(2))
    try:
        await a.open("node-a", tasks)
        await b.open("node-b", tasks)
        await a.presence.register(Presence("x", "node-a", "conn-1", time.time()),
                                  max_cluster=None)
        group_step = SpreadSteps._group
        closed: list[bool] = []

        async def close_first(self: SpreadSteps, group: str, action: str,
                              *args: Any, **kwargs: Any) -> Any:
            if action == "join" and not closed:
                closed.append(True)  # what node a's close does in this layout
                assert await a.presence.unregister("x", "conn-1")
                assert await a.sessions.end("x", conn_id="conn-1") == ["room"]
            return await group_step(self, group, action, *args, **kwargs)

        monkeypatch.setattr(SpreadSteps, "_group", close_first)
        change = await b.groups.join("x", "room")
        assert closed == [True]
        assert not change.changed
        assert await b.groups.members("room") == []
        assert await b.groups.of_client("x") == []
        assert await b.sessions.sweep() == []  # nothing left for it
    finally:
        assert await tasks.stop(2.0) == []
        await a.aclose()
        await b.aclose()


def returns_of(monkeypatch: pytest.MonkeyPatch, owner: object,
               name: str) -> asyncio.Queue[None]:
    """A queue that gets an item each time the coroutine method `owner.name` returns (or
    raises): what a test waits on instead of sleeping until a background step has run."""
    done: asyncio.Queue[None] = asyncio.Queue()
    method = getattr(owner, name)

    async def spied(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        finally:
            done.put_nowait(None)

    monkeypatch.setattr(owner, name, spied)
    return done


def room_step_unanswered(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make a spread join of "room" get no answer for its second step (the room's set)
    after its first ran (the client's set); return what puts the step back."""
    group_step = SpreadSteps._group

    async def no_answer(self: SpreadSteps, group: str, action: str,
                        *args: Any, **kwargs: Any) -> Any:
        if action == "join" and group == "room":
            raise BackendUnavailable("redis unavailable: (no answer, as under a pause)")
        return await group_step(self, group, action, *args, **kwargs)

    monkeypatch.setattr(SpreadSteps, "_group", no_answer)
    return lambda: monkeypatch.setattr(SpreadSteps, "_group", group_step)


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("via", ["local", "remote"])
async def test_a_spread_join_cut_short_is_completed_after_its_client_left(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    """Spread, with history (found by the fault checker, seed 2090242208): a join whose
    first step ran (the client's group set lists the room) got no answer for its second
    (the room's set); then the client went away, its session kept for a resume. The settle
    that the failed join asked for only covered connected clients, so nothing completed
    the join: the client's set listed the room, the room's set lacked the client, until
    the session ended. The settle now covers every client whose membership change this
    node could not finish, connected or not."""
    spread = {**SPLIT["spread"], "history_size": 10, "node_ttl": 1.0}
    a, b = cluster("a", **spread), cluster("b", **spread)
    await started(a, b)
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "lobby")
    through = a if via == "local" else b
    settled = returns_of(monkeypatch, through._node.membership, "settle")
    restore = room_step_unanswered(monkeypatch)
    with pytest.raises(BackendUnavailable):
        await through.join_group("x", "room")
    restore()
    assert await b.get_client_groups("x") == ["lobby", "room"]  # the first step ran
    assert await b.get_group_members("room") == []
    await a.disconnect("x", code=CloseCode.GOING_AWAY)  # the session stays resumable
    async with asyncio.timeout(10.0):  # a bound: maintenance settles every node_ttl / 3
        while await b.get_group_members("room") != ["x"]:
            await settled.get()
    assert await b.get_client_groups("x") == ["lobby", "room"]
    assert await b.get_group_members("lobby") == ["x"]


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
async def test_a_remote_spread_join_cut_short_reaches_the_clients_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, the client staying connected on node a: b's join got no answer for its
    second step. b's settle completes the join, and a, which saw nothing fail, is told to
    take what the backend lists: its socket gets the room's messages."""
    spread = {**SPLIT["spread"], "node_ttl": 1.0}
    a, b = cluster("a", **spread), cluster("b", **spread)
    await started(a, b)
    socket = FakeSocket("x")
    await a.connect("x", socket)
    settled = returns_of(monkeypatch, a._node.membership, "settle")
    restore = room_step_unanswered(monkeypatch)
    with pytest.raises(BackendUnavailable):
        await b.join_group("x", "room")
    restore()
    conn = a.get_connection("x")
    assert conn is not None
    async with asyncio.timeout(10.0):  # a bound: b's maintenance settles every node_ttl / 3
        while "room" not in conn.groups:
            await settled.get()  # a's settle of the socket, which b's hand-over asks for
    assert await b.get_group_members("room") == ["x"]
    await b.send_to_group("room", "hello")
    await socket.expect("hello")


@pytest.mark.parametrize(("cluster", "layout"), [("memory", {}), ("redis", {}),
                                                 ("redis", SPLIT["spread"]),
                                                 ("redis", SPLIT["buckets"]), ("cluster", {})],
                         indirect=["cluster"],
                         ids=["memory", "redis", "redis-spread", "redis-buckets", "cluster"])
async def test_a_node_that_dies_between_a_close_and_its_session_settle_leaves_it_to_the_sweep(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]) -> None:
    """With history (found by the fault checker, seed 1724822514): a close removes the
    client's presence, then suspends (or ends) its session. A node killed between the two
    left a client with groups, no presence and no place on the away list: no sweep ever
    ended its session, and its groups kept it for good. The presence removal now puts the
    client on the away list in the same step, so the sweep of any node ends the session
    when it is due, unless the client comes back. In the spread layout, where a session
    without an expiry counts as live (its expiry lives in the client's slot, which the
    presence removal cannot reach), the sweep ends a live session whose client has no
    presence while the session's holder is still the connection it found. With presence
    buckets (the away list in another slot than the presence) the client goes on the away
    list in a step before the removal."""
    options = {"history_size": 10, "session_ttl": 1.0, "node_ttl": 1.0, **layout}
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    await a.connect("x", FakeSocket("x"))
    await a.join_group("x", "room")

    async def killed(*args: Any, **kwargs: Any) -> None:
        """Node a dies here: nothing after the presence removal runs."""

    monkeypatch.setattr(a._node.closing, "settle", killed)
    swept = returns_of(monkeypatch, b.backend.sessions, "sweep")
    await a.disconnect("x", code=CloseCode.GOING_AWAY)
    assert await b.locate_client("x") is None  # the presence removal ran
    async with asyncio.timeout(10.0):  # a bound: due after session_ttl, swept per node_ttl / 3
        while await b.get_group_members("room"):
            await swept.get()
    assert await b.get_client_groups("x") == []


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
async def test_a_join_through_a_socket_the_store_never_recorded_reaches_the_live_socket(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """With history (found by the fault checker, seed 902040690): x's socket on node a was
    admitted while a could not reach Redis (its presence never recorded), and x connected
    to node b too, which holds its presence. A join through a wrote the membership (the
    client's, cluster-wide) and a's socket took it locally; then that socket closed. Its
    close removed no presence (b's), and b's live socket never learned of the room. The
    close now hands the memberships over to the live socket, as a replaced socket's
    does."""
    options = {"history_size": 10}
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    register = a.backend.presence.register

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(a.backend.presence, "register", register)  # (once)
        raise BackendUnavailable("redis unavailable: (as during a cut)")

    monkeypatch.setattr(a.backend.presence, "register", unreachable)
    await a.connect("x", FakeSocket("x-on-a"))
    on_b = FakeSocket("x-on-b")
    await b.connect("x", on_b)
    settled = returns_of(monkeypatch, b._node.membership, "settle")
    await a.join_group("x", "room")
    await a.disconnect("x", code=CloseCode.GOING_AWAY)
    conn = b.get_connection("x")
    assert conn is not None
    assert conn.is_open
    async with asyncio.timeout(5.0):  # a bound: the hand-over is one envelope
        while "room" not in conn.groups:
            await settled.get()
    assert await b.get_group_members("room") == ["x"]
    await a.send_to_group("room", "hello")
    assert (await on_b.next_json())["data"] == "hello"


@pytest.mark.parametrize("options", [{}, {"history_size": 10}], ids=["plain", "history"])
async def test_a_join_through_a_socket_that_missed_its_kick_reaches_the_live_socket(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
    """Found by the fault checker (seeds 1751875075, 153506052 and 1452719033): x connected
    to nodes a and b at once, b's registration came last, and the kick for a's socket was
    lost (a's subscription was held). A join through a found x there, wrote the membership
    (the client's, cluster-wide) and a's socket took it; then a was killed, so no close
    handed it over, and b's live socket never learned of the room. The write names the
    connection that holds x's memberships (b's): a join through another socket now tells
    that connection's node, as a join from a node without a socket of x does."""
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    monkeypatch.setattr(a._node.closing, "kick", lambda conn: None)  # (the lost kick)
    await a.connect("x", FakeSocket("x-on-a"))
    on_b = FakeSocket("x-on-b")
    await b.connect("x", on_b)
    stale = a.get_connection("x")
    assert stale is not None
    assert stale.is_open
    carried_out = returns_of(monkeypatch, b._node.membership, "_carry_out")

    await a.join_group("x", "room")
    conn = b.get_connection("x")
    assert conn is not None
    async with asyncio.timeout(5.0):  # a bound: the change is one envelope
        while "room" not in conn.groups:
            await carried_out.get()
    await b.send_to_group("room", "hello")
    if options:  # (with history a message is an envelope)
        assert (await on_b.next_json())["data"] == "hello"
    else:
        await on_b.expect("hello")

    await a.leave_group("x", "room")  # and a leave the same way
    async with asyncio.timeout(5.0):
        while "room" in conn.groups:
            await carried_out.get()
    assert await b.get_group_members("room") == []


async def test_a_socket_replaced_before_its_session_opened_does_not_end_the_live_one(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """With history (the shape of seed 153506052): x's socket on a registered, then x's
    socket on b took the client, opened its session and joined the lobby; a's session open
    came last, with b's kick for it lost. It ended b's session (the lobby with it) and took
    the session's holder, so that a join through a named a's socket. An open now checks
    that presence still names the opening socket: a's does nothing, and a's socket is
    closed as replaced."""
    options = {"history_size": 10}
    a, b = cluster("a", **options), cluster("b", **options)
    await started(a, b)
    monkeypatch.setattr(a._node.closing, "kick", lambda conn: None)  # (the lost kick...)
    opening, b_done = asyncio.Event(), asyncio.Event()
    activate = a.backend.sessions.activate

    async def after_b(*args: Any, **kwargs: Any) -> Any:
        opening.set()
        await b_done.wait()
        monkeypatch.undo()  # (...and a's own kick at the end of its admission works)
        return await activate(*args, **kwargs)

    monkeypatch.setattr(a.backend.sessions, "activate", after_b)
    on_a, on_b = FakeSocket("x-on-a"), FakeSocket("x-on-b")
    connecting = asyncio.create_task(a.connect("x", on_a))
    await opening.wait()  # (a registered x)
    await b.connect("x", on_b)
    await b.join_group("x", "lobby")
    b_done.set()
    await connecting

    assert (await on_a.wait_closed())[0] == CloseCode.REPLACED
    assert await b.get_group_members("lobby") == ["x"]
    conn = b.get_connection("x")
    assert conn is not None
    assert conn.is_open
    assert "lobby" in conn.groups
    await a.send_to_group("lobby", "hello")
    assert (await on_b.next_json())["data"] == "hello"


async def test_a_join_whose_route_to_the_holder_fails_is_still_written(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The join through a socket that missed its kick is written; telling the holder's
    node fails (Redis stopped answering): the join does not fail for it, and the node
    asks for a resync."""
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    monkeypatch.setattr(a._node.closing, "kick", lambda conn: None)  # (the lost kick)
    await a.connect("x", FakeSocket("x-on-a"))
    await b.connect("x", FakeSocket("x-on-b"))

    async def unanswered(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("redis unavailable: (no answer)")

    monkeypatch.setattr(a.backend.groups, "route_change", unanswered)
    asked: list[None] = []
    want_resync = a._node.ctx.want_resync
    monkeypatch.setattr(a._node.ctx, "want_resync",
                        lambda: (asked.append(None), want_resync())[1])
    await a.join_group("x", "room")
    assert await b.get_group_members("room") == ["x"]
    assert asked == [None]
