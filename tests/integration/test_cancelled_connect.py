"""A connect cancelled after its registration went out (its caller's timeout, a client that
left during the handshake) leaves no presence behind. Before, nothing removed it while the
node lived (only a resync prunes a node's stale entries, and none was asked for): the
cluster counted it against max_cluster_connections (and the user's seats), located the
client on this node, and a send to it from another node reported success."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import BackendUnavailable, CloseCode, Identity, WebSocketConnectionManager
from tests.integration.test_cluster import Cluster, started
from tests.integration.test_cluster import cluster as cluster  # (the fixture)
from tests.integration.test_emitter import until
from tests.support.fakes import FakeSocket, FakeWebSocket

Nodes = Cluster  # (the fixture `cluster`: embedded, Redis, a three-master Cluster)


async def pair(nodes: Nodes, **settings: Any) -> tuple[WebSocketConnectionManager,
                                                       WebSocketConnectionManager]:
    """Two started nodes sharing the store: `a` takes the connect, `b` looks on."""
    a, b = nodes("a", **settings), nodes("b", **settings)
    await started(a, b)
    return a, b


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel `task` (a connect) and see it end cancelled."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def ghost_connecting(a: WebSocketConnectionManager) -> asyncio.Task[None]:
    """A connect of client "ghost" to `a`, under way."""
    return asyncio.create_task(a.connect("ghost", FakeSocket("ghost")))


async def released(a: WebSocketConnectionManager, registers: Any,
                   release: asyncio.Event) -> None:
    """Let the held batch of registrations go on, take its answer, and wait for what
    undoes a cancelled connect's registration."""
    release.set()
    if registers._task is not None:
        await registers._task
    await cleanups_done(a)


async def cleanups_done(manager: WebSocketConnectionManager) -> None:
    """Wait for the node's tasks that undo a cancelled registration."""
    tasks = manager._node.ctx.tasks.running("stabilizer-unregister-abandoned")
    await asyncio.gather(*tasks, return_exceptions=True)


async def assert_gone(a: WebSocketConnectionManager, b: WebSocketConnectionManager) -> None:
    assert not a.is_connected("ghost")
    assert await b.locate_client("ghost") is None
    assert await b.get_cluster_connection_count() == 0
    if not b.config.history_enabled:  # (with history a send is kept for the session)
        assert not await b.send_to_client("ghost", "anyone there?")


def held_before_sending(registers: Any, then: Callable[[Any], Any] | None = None,
                        ) -> tuple[asyncio.Event, asyncio.Event]:
    """Make each batch of the register batcher wait, once taken, until `release` is set,
    then go to Redis; `then(calls)` (when given) stands for its answer: (taken, release)."""
    real_send = registers._send
    taken, release = asyncio.Event(), asyncio.Event()

    async def held(calls: Any) -> Any:
        taken.set()
        await release.wait()
        answer = await real_send(calls)
        return answer if then is None else then(calls)

    registers._send = held
    return taken, release


def blocked(target: Any, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the coroutine method `target.name` run, then wait before it returns: (ran,
    release)."""
    real: Callable[..., Awaitable[Any]] = getattr(target, name)
    ran, release = asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        ran.set()
        await release.wait()
        return result

    setattr(target, name, held)
    return ran, release


async def test_a_connect_cancelled_after_its_registration_leaves_no_presence(
        cluster: Nodes) -> None:
    """Cancelled while its session opens (history: the step after the registration)."""
    a, b = await pair(cluster, history_size=10)
    ran, _ = blocked(a._node.ctx.backend.sessions, "activate")
    connecting = ghost_connecting(a)
    await ran.wait()
    assert await b.locate_client("ghost") == "a"  # registered, not yet admitted
    await cancelled(connecting)
    await cleanups_done(a)
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_connect_cancelled_while_its_registration_is_in_flight_leaves_no_presence(
        cluster: Nodes) -> None:
    """The register script ran in Redis, and its caller gave up before the reply came."""
    a, b = await pair(cluster)
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]
    ran, release = blocked(registers, "_send")
    connecting = ghost_connecting(a)
    await ran.wait()
    await cancelled(connecting)
    await released(a, registers, release)
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_registration_that_lands_after_the_removal_of_its_cancelled_connect_is_undone(
        cluster: Nodes) -> None:
    """The connect is cancelled with its registration taken into a batch but not yet run
    in Redis: the admission's removal runs first and finds nothing, then the registration
    lands. Its answer, which no caller waits for any more, removes it."""
    a, b = await pair(cluster)
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]
    taken, release = held_before_sending(registers)
    connecting = ghost_connecting(a)
    await taken.wait()
    await cancelled(connecting)
    await cleanups_done(a)  # the admission's removal: nothing recorded yet
    await released(a, registers, release)  # the registration runs, its answer comes back
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
@pytest.mark.parametrize("lost", ["round trip", "one reply"])
async def test_a_registration_whose_reply_is_lost_after_its_connect_was_cancelled_is_undone(
        cluster: Nodes, lost: str) -> None:
    """As above, but once the script has run its reply is lost (the round trip failed: a
    timeout, a dropped connection; or the one call's reply is an error, as a Cluster
    pipeline reports a node it lost): nobody knows whether it recorded the presence, and
    its undo was dropped, so the ghost stayed until some resync."""
    a, b = await pair(cluster)
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]

    def lost_reply(calls: Any) -> Any:
        if lost == "one reply":
            return [BackendUnavailable("the reply was lost") for _ in calls]
        raise BackendUnavailable("the reply was lost")

    real_send = registers._send
    taken, release = held_before_sending(registers, then=lost_reply)
    connecting = ghost_connecting(a)
    await taken.wait()
    await cancelled(connecting)
    await cleanups_done(a)  # the admission's removal: nothing recorded yet
    registers._send = real_send
    await released(a, registers, release)
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_connect_cancelled_in_the_pass_its_registration_was_answered_leaves_none(
        cluster: Nodes) -> None:
    """The answer resolved the caller's future, and the cancellation (a timeout due in the
    same loop pass) came before the caller resumed: the answer was thrown away."""
    a, b = await pair(cluster)
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]
    real_run = registers._run
    connecting: asyncio.Task[Any] | None = None

    async def answered_then_cancelled(calls: Any, futures: Any) -> None:
        await real_run(calls, futures)  # every caller's future resolved, none resumed
        assert connecting is not None
        connecting.cancel()

    registers._run = answered_then_cancelled
    connecting = ghost_connecting(a)
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await cleanups_done(a)
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_user_connect_cancelled_after_its_script_leaves_no_presence_nor_seat(
        cluster: Nodes) -> None:
    """With presence in several buckets a user's seat follows the registration's script in
    a step of its own; a connect cancelled there (the registration answered, the admission
    not yet aware of it) leaves nothing of the connection, its seat included."""
    a, b = await pair(cluster, presence_buckets=4)
    ran, release = blocked(a._node.ctx.backend.presence._core, "follow_seats")  # type: ignore[attr-defined]
    session = a.open_session(FakeWebSocket("ghost"), "ghost", identity=Identity("ann"))

    async def enter() -> None:
        async with session:
            pytest.fail("admitted")

    connecting = asyncio.create_task(enter())
    await ran.wait()  # the script ran, and the seat step after it
    await cancelled(connecting)
    release.set()  # (the removal's seat step goes through it too)
    await cleanups_done(a)
    await assert_gone(a, b)
    assert await b.get_user_connections("ann") == []


@pytest.mark.redis
@pytest.mark.parametrize("cluster", ["redis", "cluster"], indirect=True)
async def test_a_reconnect_cancelled_in_flight_leaves_its_session_to_the_sweep(
        cluster: Nodes) -> None:
    """With history, the client's session and groups outlive its presence until the
    session's time to resume runs out, then the sweep ends them. A cancelled reconnect's
    registration was undone by a bare removal, which put the client on no away list: its
    session and groups were never swept."""
    settings = {"history_size": 10, "session_ttl": 1.0, "node_ttl": 1.5}
    a, b = await pair(cluster, **settings)
    await b.connect("h", FakeSocket("h"))
    await b.join_group("h", "room")
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]
    ran, release = blocked(registers, "_send")
    connecting = asyncio.create_task(a.connect("h", FakeSocket("h")))  # replaces b's
    await ran.wait()
    await cancelled(connecting)
    await released(a, registers, release)
    assert await b.locate_client("h") is None

    async def swept() -> bool:
        return await b.get_group_members("room") == []

    await until(swept, timeout=15.0)  # (a bound: the session's time, then a sweep step)


@pytest.mark.parametrize("cluster", ["memory", pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
async def test_a_reconnect_cancelled_on_the_same_node_leaves_no_socket_without_presence(
        cluster: Nodes) -> None:
    """Client c reconnects on the node that holds it, and the new connect is cancelled
    after its registration made the store name the new socket. Removing that entry (by the
    new conn id) left the client with no presence and its user with no seat, while the old
    socket stayed open in the pool: another node could not reach it, and the user could
    open one connection more than max_connections_per_user. The old socket is now closed
    as replaced, as the KICK closes it when the reconnect went to another node."""
    a, b = await pair(cluster, max_connections_per_user=1)
    admitted: dict[str, asyncio.Event] = {}

    async def serve(ws: FakeWebSocket, client_id: str) -> None:
        async with a.open_session(ws, client_id, identity=Identity("ann")) as session:
            admitted.setdefault(client_id, asyncio.Event()).set()
            while await session.receive() is not None:
                pass

    first = FakeWebSocket("c")
    serving = asyncio.create_task(serve(first, "c"))
    await until(lambda: asyncio.sleep(0, "c" in admitted))
    ran, release = blocked(a._node.admission._opening, "settle")
    again = asyncio.create_task(serve(FakeWebSocket("c-again"), "c"))
    await ran.wait()  # registered: the store names the new socket
    await cancelled(again)
    release.set()  # (later admissions settle at once)
    await cleanups_done(a)
    assert not a.is_connected("c")
    assert (await first.wait_closed())[0] == CloseCode.REPLACED
    await serving
    assert await b.locate_client("c") is None
    assert await b.get_user_connections("ann") == []
    # the user's one seat is free again, and taken by the next client: a second is refused
    other = FakeWebSocket("d")
    serving = asyncio.create_task(serve(other, "d"))
    await until(lambda: asyncio.sleep(0, "d" in admitted))
    assert [p.client_id for p in await b.get_user_connections("ann")] == ["d"]
    refused = a.open_session(FakeWebSocket("e"), "e", identity=Identity("ann"))
    async with refused as session:
        assert session.refused is not None
    other.client_leaves()
    await serving
