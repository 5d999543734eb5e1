"""Local group memberships agree with Redis again after what the regressions pin, the other
way round: a leave lost with the owner's subscription, and a join through a node whose
socket of the client is replaced by a newer one on the same node."""

from __future__ import annotations

import asyncio
import json

import pytest

from stabilizer import WebSocketConnectionManager
from stabilizer.errors import BackendUnavailable
from tests.faults.test_regressions import (
    NOTICE,
    PROBES,
    Node,
    _subscribed,
    _true,
    _unsubscribed,
    node,
    proxy,
    until,
)
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

__all__ = ["node", "proxy"]  # the fixtures, re-exported for pytest

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def agree(sender: WebSocketConnectionManager, socket: FakeSocket, text: str) -> bool:
    """True when `socket` receives the room's messages exactly if Redis lists alice (with
    history, a frame carries the text as its data). Each probe numbers its text, so a
    frame of an earlier probe that arrives late is skipped, not taken for this one."""
    text = f"{text} #{next(PROBES)}"
    await sender.send_to_group("room", text)
    try:
        async with asyncio.timeout(0.5):
            while not _carries(await socket.frames.get(), text):
                pass
        received = True
    except TimeoutError:
        received = False
    return received == ("alice" in await sender.get_group_members("room"))


def _carries(frame: str | bytes, text: str) -> bool:
    if frame == text:
        return True
    if not isinstance(frame, str) or not frame.startswith("{"):
        return False
    body = json.loads(frame)
    return isinstance(body, dict) and body.get("data") == text


async def test_a_remote_leave_lost_with_the_owners_subscription_is_carried_out(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    channel = f"{{{namespace}}}:n:a"
    await proxy.drop_subscriptions(hold=True)
    assert await until(lambda: _unsubscribed(private_redis.url, channel))
    await b.leave_group("alice", "room")  # routed to node a's channel: nobody listens
    proxy.restore()
    assert await until(lambda: _subscribed(private_redis.url, channel))
    assert await until(lambda: agree(b, alice, "still here?")), (
        "Redis no longer lists alice in room, but her node keeps delivering it to her")


async def test_a_join_through_a_socket_replaced_on_its_own_node_reaches_the_new_one(
    node: Node,
) -> None:
    a = node("a")
    await a.start()
    older, newer = FakeSocket("older"), FakeSocket("newer")
    await a.connect("alice", older)
    joining = asyncio.create_task(a.join_group("alice", "room"))
    await a.connect("alice", newer)  # the join's steps interleave with the replacement's
    await joining
    assert await until(lambda: agree(a, newer, "hello room")), (
        f"room lists {await a.get_group_members('room')}, but alice's newer socket does not "
        "receive the room")


async def test_a_client_leaving_before_its_lost_join_is_settled_leaves_the_group(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 1564657396: c0's node missed a remote join (its subscription was cut) and c0
    disconnected before any settle; the node, knowing no group of c0's, left none in Redis,
    and c0 stayed a member of g1 for good."""
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("alice"))
    channel = f"{{{namespace}}}:n:a"
    await proxy.drop_subscriptions(hold=True)
    assert await until(lambda: _unsubscribed(private_redis.url, channel))
    assert await until(lambda: _false(a.backend.routing.subscribed.is_set()), NOTICE)
    await b.join_group("alice", "room")  # routed to node a's channel: nobody listens
    assert await b.get_group_members("room") == ["alice"]
    await a.disconnect("alice")
    assert await b.get_group_members("room") == []
    assert await b.get_client_groups("alice") == []
    proxy.restore()


async def _false(value: bool) -> bool:
    return not value


async def test_a_group_followed_while_the_subscription_is_confirmed_is_subscribed_too(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 10 (tests/faults/test_seeds.py): c0 joined g0 on replica-1 while its new
    subscription (computed before the join) waited for Redis's confirmations; the join left
    g0's channel to "the next subscription", which had already been sent without it, and
    replica-1 never received g0's messages from other replicas."""
    a = node("a", proxy.url)
    await a.start()
    await a.connect("alice", FakeSocket("alice"))
    await proxy.drop_subscriptions(hold=True)  # every subscribe waits at the proxy
    assert await until(lambda: _false(a.backend.routing.subscribed.is_set()), NOTICE)
    held = proxy.counters.held
    assert await until(lambda: _true(proxy.counters.held > held), NOTICE)  # node a's own
    await a.join_group("alice", "room")  # while node a's new subscription is unconfirmed
    proxy.restore()
    assert await until(lambda: _subscribed(private_redis.url, f"{{{namespace}}}:gc:room")), (
        "node a has a member of room but does not subscribe to its channel")


async def test_a_leave_that_lands_on_a_replaced_socket_reaches_the_live_one(
    node: Node, proxy: FaultProxy, private_redis: RedisServer, namespace: str,
) -> None:
    """Seed 574562604: c0 connected on replica-0 and replica-1 at once while replica-0's
    subscription was gone (the kick of its socket waited for the settle after it came
    back); c0 joined g0 through replica-1 (its live socket), then left g0 through
    replica-0, which still held the older socket: Redis dropped c0 from g0, the live socket
    kept receiving g0. The older socket held no group when it was replaced, so it handed
    nothing over."""
    a, b = node("a", proxy.url), node("b")
    await a.start()
    await b.start()
    await a.connect("alice", FakeSocket("older"))
    await proxy.drop_subscriptions(hold=True)  # the kick for a's socket will wait
    assert await until(lambda: _unsubscribed(private_redis.url, f"{{{namespace}}}:n:a"))
    live = FakeSocket("live")
    await b.connect("alice", live)
    await b.join_group("alice", "room")  # the live socket joins
    await a.leave_group("alice", "room")  # a still holds the older socket: leaves through it
    proxy.restore()
    assert await until(lambda: agree(b, live, "still here?")), (
        f"room lists {await b.get_group_members('room')}, but alice's live socket "
        "receives the room")


async def test_a_join_that_lands_while_its_client_disconnects_leaves_nothing_behind(
    node: Node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 129177783: c0 connected and joined g1 through the same replica at once, then
    left for good (1000, history off). The join had followed g1's channel (a round trip)
    while the client closed; its Redis write came after the close had settled, and Redis
    listed c0 in g1 for good."""
    a = node("a")
    await a.start()
    await a.connect("alice", FakeSocket("alice"))
    groups = a.backend.groups
    subscribe = groups.subscribe
    following, go_on = asyncio.Event(), asyncio.Event()

    async def slow_subscribe(group: str) -> None:
        following.set()
        await go_on.wait()
        await subscribe(group)

    monkeypatch.setattr(groups, "subscribe", slow_subscribe)
    joining = asyncio.ensure_future(a.join_group("alice", "room"))
    await following.wait()  # the join follows room's channel...
    closing = asyncio.ensure_future(a.disconnect("alice"))  # ...as alice leaves for good
    await asyncio.sleep(0)
    go_on.set()
    await asyncio.gather(joining, closing, return_exceptions=True)

    async def nothing_left() -> bool:
        return (await a.get_group_members("room") == []
                and await a.get_client_groups("alice") == [])

    assert await until(nothing_left), (
        f"alice left, but room lists {await a.get_group_members('room')}")


async def test_a_remote_join_undone_in_redis_before_it_lands_is_not_applied(
    node: Node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 361383291: join_group(c0, g2) through another replica raced c0's resume, which
    found its session gone and opened a fresh one; the fresh session ended every earlier
    membership in Redis after the join wrote it, then the MEMBERSHIP envelope reached c0's
    node, which joined c0 to g2 as the envelope said: Redis did not list c0, c0 received g2.
    """
    a, b = node("a", history_size=100, session_ttl=60.0), node("b", history_size=100,
                                                              session_ttl=60.0)
    await a.start()
    await b.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    groups = b.backend.groups
    join = groups.join

    async def join_then_fresh_session(client_id: str, group: str) -> bool:
        joined = await join(client_id, group)
        await a.backend.sessions.activate(client_id, fresh=True)  # the racing resume
        return joined

    monkeypatch.setattr(groups, "join", join_then_fresh_session)
    await b.join_group("alice", "room")
    conn = a.get_connection("alice")
    assert conn is not None

    async def member_here_only() -> bool:  # her node delivers room, Redis does not list her
        return "room" in conn.groups and "alice" not in await b.get_group_members("room")

    assert not await until(member_here_only, 2.0), (
        "Redis does not list alice in room, but her node joined her to it")
    assert await agree(b, alice, "in the room?")


async def test_a_join_that_the_backend_refuses_is_not_kept_locally(
    node: Node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 10: join_group(c0, g2) through c0's own replica while redis-server was paused
    raised BackendUnavailable, but c0 had joined g2 locally first and stayed a member
    there: c0 received g2, which Redis never listed."""
    a = node("a")
    await a.start()
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    groups = a.backend.groups

    async def unavailable(client_id: str, group: str) -> bool:
        raise BackendUnavailable("backend did not answer within 0.5s")

    monkeypatch.setattr(groups, "join", unavailable)
    with pytest.raises(BackendUnavailable):
        await a.join_group("alice", "room")
    conn = a.get_connection("alice")
    assert conn is not None
    assert "room" not in conn.groups, "the refused join was kept on alice's socket"
