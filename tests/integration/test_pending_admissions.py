"""A connection registered in the shared store but not yet in its node's pool (its admission
waits for the register's reply, which travels on another Redis connection than the pub/sub
messages) is one the rest of the cluster already sees. What other nodes ask of it meanwhile
is kept and carried out when the admission ends, as a kick was: a join (before, the
MEMBERSHIP envelope was dropped and the client never got the group's messages though every
view listed it), a disconnect of its user or of the client (before, reported done and the
socket stayed open). And the node's own max_connections counts connections being admitted
(before, connects that arrived together all passed one check). The other way round, a node
that shuts down takes each connection's presence away before it closes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import (
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.services.admission import Seated
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis


async def pair(make_manager: ManagerFactory, redis_url: str, namespace: str,
               **settings: Any) -> tuple[WebSocketConnectionManager, WebSocketConnectionManager]:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace,
                             heartbeat_interval=3600, heartbeat_timeout=7200, **settings)
    a, b = make_manager(config), make_manager(config)
    await a.start()
    await b.start()
    return a, b


def hold_fresh_session(manager: WebSocketConnectionManager, client_id: str,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold `client_id`'s next fresh session on `manager` right after the store opened it
    (registered, its session begun, not in the pool yet): set `opened` then, and go on once
    the test sets `release`."""
    sessions = manager.backend.sessions
    activate = sessions.activate
    opened, release = asyncio.Event(), asyncio.Event()

    async def held_open(held_id: str, **kwargs: Any) -> Any:
        baselines = await activate(held_id, **kwargs)
        if kwargs.get("fresh") and held_id == client_id:
            opened.set()
            await release.wait()
        return baselines

    monkeypatch.setattr(sessions, "activate", held_open)
    return opened, release


@asynccontextmanager
async def admitting(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                    monkeypatch: pytest.MonkeyPatch,
                    admit: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """Run `admit` on A with its register reply held until the block ends; inside the
    block the connection is registered in Redis and not yet in A's pool. On exit, whatever
    B sent A meanwhile has reached A's listener before the reply is let through: a marker
    broadcast after it reached a client of A (one subscription delivers in order)."""
    witness = FakeSocket("witness")
    await a.connect("witness", witness)
    register = a.backend.presence.register
    registered, release = asyncio.Event(), asyncio.Event()

    async def held_reply(*args: Any, **kwargs: Any) -> Any:
        reply = await register(*args, **kwargs)
        registered.set()
        await release.wait()
        return reply

    monkeypatch.setattr(a.backend.presence, "register", held_reply)
    task = asyncio.create_task(admit())
    await registered.wait()
    monkeypatch.setattr(a.backend.presence, "register", register)
    yield
    await b.broadcast("marker")
    await witness.expect("marker")
    release.set()
    await task


@pytest.mark.parametrize("joiner", ["other node", "same node"])
async def test_a_join_written_while_the_client_is_being_admitted_reaches_it(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch, joiner: str) -> None:
    """From another node; or from A itself, where the join finds no connection in the pool
    and takes the remote path (A used to drop its own MEMBERSHIP envelope, seed
    1756799326 of the fault checker)."""
    a, b = await pair(make_manager, redis_url, namespace)
    sock = FakeSocket("c1")
    async with admitting(a, b, monkeypatch, lambda: a.connect("c1", sock)):
        assert a.get_connection("c1") is None
        # the store lists c1 on A: the join is written, and A is told
        await (b if joiner == "other node" else a).join_group("c1", "room")
    conn = a.get_connection("c1")
    assert conn is not None

    async def joined() -> bool:  # (A joins in a task of its own, once subscribed)
        return conn.groups == {"room"}

    await until(joined)
    await b.send_to_group("room", "hello room")
    await sock.expect("hello room")


@pytest.mark.parametrize("how", ["user", "client"])
async def test_a_disconnect_reaches_a_connection_being_admitted(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A ban ("log out everywhere") must not miss the tab that is connecting."""
    a, b = await pair(make_manager, redis_url, namespace)
    sock = FakeSocket("mallory")
    admission = a._node.admission
    async with admitting(a, b, monkeypatch, lambda: admission.admit(
            "mallory/d1", sock, user=Seated("mallory"))):
        if how == "user":
            assert await b.disconnect_user("mallory", code=4403, reason="banned") == 1
        else:
            assert await b.disconnect_client("mallory/d1", code=4403, reason="banned")
    assert await sock.wait_closed() == (4403, "banned")
    assert not a.is_connected("mallory/d1")


async def test_a_disconnect_on_the_same_node_reaches_a_connection_being_admitted(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await pair(make_manager, redis_url, namespace)
    sock = FakeSocket("c2")
    async with admitting(a, b, monkeypatch, lambda: a.connect("c2", sock)):
        assert await a.disconnect_client("c2", code=4000, reason="bye")
    assert await sock.wait_closed() == (4000, "bye")


async def test_max_connections_holds_for_connects_that_arrive_together(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    a, _b = await pair(make_manager, redis_url, namespace, max_connections=2)
    outcomes = await asyncio.gather(
        *(a.connect(f"c{i}", FakeSocket(f"c{i}")) for i in range(6)), return_exceptions=True)
    admitted = [o for o in outcomes if o is None]
    refused = [o for o in outcomes if isinstance(o, ConnectionLimitExceededError)]
    assert (len(admitted), len(refused)) == (2, 4)
    assert a.get_connection_count() == 2
    # a reconnect of an admitted client replaces it, at the limit too
    await a.connect(next(f"c{i}" for i, o in enumerate(outcomes) if o is None), FakeSocket())
    assert a.get_connection_count() == 2


class SlowClose(FakeSocket):
    """A socket whose close frame takes a while to go out (a slow peer)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closing, self.may_close = asyncio.Event(), asyncio.Event()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closing.set()
        await self.may_close.wait()
        await super().close(code, reason)


@pytest.mark.parametrize("layout", ["namespace", "spread"])
async def test_a_join_while_the_node_shuts_down_finds_its_client_gone(
        make_manager: ManagerFactory, redis_url: str, namespace: str, layout: str) -> None:
    """A graceful shutdown closes each connection as any close does: its presence goes
    first. Before, presence named the stopping node until its very end, so a join another
    node (or an emitter) made meanwhile was written, and its membership and presence entry
    outlived the client for good (the node's final removal ends no group)."""
    a, b = await pair(make_manager, redis_url, namespace, redis_spread_keys=layout == "spread")
    sock = SlowClose("c1")
    await a.connect("c1", sock)
    shutdown = asyncio.create_task(a.graceful_shutdown(5))
    await sock.closing.wait()  # A is closing c1: its close frame is on its way
    with pytest.raises(ConnectionNotFoundError):
        await b.join_group("c1", "room", presence={"name": "c1"})
    sock.may_close.set()
    await shutdown
    assert await b.get_group_members("room") == []
    assert await b.get_presence("room") == {}


async def test_with_history_what_comes_while_a_fresh_session_is_admitted_reaches_it(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The session opened, so what is sent to the client after its start is owed to it;
    B's listener delivered it while the connection was not in the pool yet (the session's
    reply and the pub/sub message travel on different Redis connections). Before, B's
    stream order moved past it and the connection never got it, nor a `recovered: false`."""
    a, b = await pair(make_manager, redis_url, namespace, history_size=50,
                      history_ttl=60.0, session_ttl=60.0)
    opened, release = hold_fresh_session(b, "c1", monkeypatch)
    sock = FakeSocket("c1")
    admitting_c1 = asyncio.create_task(b.connect("c1", sock))
    await opened.wait()  # registered, and the session began: not in B's pool yet
    assert await a.send_to_client("c1", "owed")
    order = b._node.router.order  # type: ignore[attr-defined]

    async def delivered() -> bool:  # B's listener took it, and found nobody to give it to
        last = order.last("c:c1")
        return last is not None and last[0] >= 1

    await until(delivered)
    release.set()
    await admitting_c1
    got = await sock.next_json()
    assert (got["type"], got["data"]) == ("message", "owed")
    assert await a.send_to_client("c1", "next")
    after = await sock.next_json()
    assert after["data"] == "next"
    assert after["offset"] == got["offset"] + 1


async def test_a_node_acts_on_a_membership_envelope_it_sent_itself(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    """A join made on a client's own node while the client was being admitted takes a
    remote join's path: the node sends itself the MEMBERSHIP envelope, which may arrive
    once the admission is over (seed 1756799326 replayed 2 of 3 on the fix that only kept
    envelopes during the admission). A node used to drop every envelope it sent itself."""
    a, b = await pair(make_manager, redis_url, namespace)
    sock = FakeSocket("c1")
    await a.connect("c1", sock)
    conn = a.get_connection("c1")
    assert conn is not None
    keys = KeyLayout(namespace)
    await b.backend.groups.join("c1", "room")  # (the join's write; its envelope follows)
    envelope = encode(Envelope(Kind.MEMBERSHIP, a.node_id, "c1", "room", ref="join",
                               holder=conn.conn_id))
    redis = Redis.from_url(redis_url)
    try:
        channel = keys.node_channel(keys.bucket_of("c1"), a.node_id)
        assert await redis.publish(channel, envelope) == 1
    finally:
        await redis.aclose()

    async def joined() -> bool:
        return conn.groups == {"room"}

    await until(joined)
