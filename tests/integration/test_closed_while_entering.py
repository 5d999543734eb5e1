"""A connection closed while its admission still enters it (fault checker seed 1281921853,
spread keys, history on, under CPU load).

A fresh session with history is put in its node's pool, then caught up: the node's listener
had delivered a message of the session's streams while the connection was being admitted,
and the catch-up reads it back from the store. While that read was pending, the client
reconnected on another node, whose KICK closed the connection (4500) and ran its disconnect
hooks; the admission then went on as if nothing had happened: the heartbeat schedule
tracked the closed connection for good (a leak), the node counted and logged it connected,
and on_connect ran after on_disconnect. A kick of a connection being entered now waits for
its admission to end, as the kick of one still registering does; a connection closed
otherwise meanwhile (a disconnect on its node) is neither watched nor announced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from stabilizer import (
    CloseCode,
    ConnectionEvent,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.pure.streams import client_stream
from tests.conftest import ManagerFactory
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_emitter import until
from tests.integration.test_groups_history import HISTORY
from tests.integration.test_resume_store_loss import owed_while_admitted
from tests.support.fakes import FakeSocket, FakeWebSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest


def hold_catch_up(manager: WebSocketConnectionManager, client_id: str,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold `manager`'s first read of `client_id`'s stream (a catch-up's): set `reading`
    then, and read once the test sets `release`."""
    history = manager.backend.history
    read = history.read
    reading, release = asyncio.Event(), asyncio.Event()

    async def held_read(stream: str, after: int, epoch: str, **bounds: int) -> object:
        if stream == client_stream(client_id) and not reading.is_set():
            reading.set()
            await release.wait()
        return await read(stream, after, epoch, **bounds)

    monkeypatch.setattr(history, "read", held_read)
    return reading, release


def hooked(manager: WebSocketConnectionManager) -> list[tuple[str, str]]:
    """Record the hooks `manager` runs, in order: ("connect" or "disconnect", conn id)."""
    seen: list[tuple[str, str]] = []
    manager.on_connect(lambda event: seen.append(("connect", event.conn_id)))
    manager.on_disconnect(lambda event: seen.append(("disconnect", event.conn_id)))
    return seen


async def held_in_catch_up(a: WebSocketConnectionManager, b: WebSocketConnectionManager,
                           monkeypatch: pytest.MonkeyPatch,
                           admit: Callable[[], Awaitable[object]],
                           ) -> tuple[asyncio.Task[object], asyncio.Event]:
    """Run `admit` (a fresh session of c1 on B) as owed_while_admitted does; B's admission
    then catches c1 up, and its read of the message is held. Return the task, and the event
    that lets the read go on."""
    reading, release = hold_catch_up(b, "c1", monkeypatch)
    admission, let_open = await owed_while_admitted(a, b, monkeypatch, admit)
    let_open.set()
    await reading.wait()  # in B's pool, being caught up
    return admission, release


def watched(manager: WebSocketConnectionManager) -> int:
    """How many connections the heartbeat schedule of `manager` holds."""
    return len(manager._node.liveness.schedule)


async def test_a_kick_during_the_catch_up_closes_the_connection_once_it_is_admitted(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    witness = FakeSocket("witness")
    await b.connect("witness", witness)
    seen = hooked(b)
    first = FakeSocket("c1")
    admitting, release = await held_in_catch_up(a, b, monkeypatch,
                                                lambda: b.connect("c1", first))
    entering = b.get_connection("c1")
    assert entering is not None
    # c1 reconnects on A: A's register tells B to close its socket (a KICK); a broadcast
    # after it reaches B once B's listener handled the KICK (one subscription, in order)
    second = FakeSocket("c1-again")
    await a.connect("c1", second)
    await a.broadcast("marker")
    assert (await witness.next_json())["data"] == "marker"
    release.set()
    await admitting
    assert watched(b) == 1  # the witness alone: the closed connection is not held
    assert await first.wait_closed() == (CloseCode.REPLACED, "replaced by a connection "
                                                            "on another node")

    async def both_ran() -> bool:
        return len([hook for hook in seen if hook[1] == entering.conn_id]) >= 2

    await until(both_ran)
    assert [hook for hook in seen if hook[1] == entering.conn_id] == [
        ("connect", entering.conn_id), ("disconnect", entering.conn_id)]
    assert not b.is_connected("c1")
    assert a.is_connected("c1")


async def test_a_disconnect_during_the_catch_up_ends_the_session_unannounced(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application disconnects c1 on its node while its session is caught up: the
    session that admitted it ends quietly, and no on_connect follows the on_disconnect."""
    a, b = cluster("a", **HISTORY), cluster("b", **HISTORY)
    await started(a, b)
    seen = hooked(b)
    connects = b.stats.connects
    ws = FakeWebSocket("c1")
    served: list[str | bytes | None] = []

    async def serve() -> None:
        async with b.open_session(ws, "c1") as session:
            served.append(await session.receive())

    serving, release = await held_in_catch_up(a, b, monkeypatch, serve)
    entering = b.get_connection("c1")
    assert entering is not None
    await b.disconnect("c1", code=4403, reason="banned")
    release.set()
    await serving
    assert watched(b) == 0
    assert served == [None]
    assert (await ws.wait_closed())[0] == 4403
    assert seen == [("disconnect", entering.conn_id)]
    assert b.stats.connects == connects
    assert not b.is_connected("c1")


async def test_the_heartbeat_schedule_refuses_a_connection_that_is_closing(
        make_manager: ManagerFactory) -> None:
    """(Defence in depth: nothing forgets a connection watched after its close.)"""
    manager = make_manager(WebSocketConfig(heartbeat_interval=3600.0, heartbeat_timeout=3600.0))
    sock = FakeSocket("c1")
    await manager.connect("c1", sock)
    conn = manager.get_connection("c1")
    assert conn is not None
    assert watched(manager) == 1
    await manager.disconnect("c1")
    manager._node.liveness.track(conn)
    assert watched(manager) == 0


@pytest.mark.parametrize("cluster", ["memory", pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
@pytest.mark.parametrize("close", ["client here", "client there"])
async def test_a_disconnect_during_the_connect_hooks_waits_for_them(
        cluster: Cluster, close: str) -> None:
    """disconnect_client (here, or from another node: a CLIENT_CLOSE) while c1's on_connect
    runs closed it at once: on_disconnect ran before on_connect ended, and the other nodes
    heard "disconnect" before "connect". Such a close now waits for the connection to be
    announced, as a KICK does."""
    a = cluster("a", cluster_events=True)
    b = cluster("b", cluster_events=True)
    heard: list[str] = []
    b.on_cluster_event(lambda event: heard.append(event.event)
                       if event.client_id == "c1" else None)
    seen: list[str] = []
    hooking, gate = asyncio.Event(), asyncio.Event()

    async def on_connect(event: ConnectionEvent) -> None:
        if event.client_id != "c1":  # (the witness)
            return
        seen.append("connect-start")
        hooking.set()
        await gate.wait()
        seen.append("connect-end")

    a.on_connect(on_connect)
    a.on_disconnect(lambda event: seen.append("disconnect") if event.client_id == "c1" else None)
    await started(a, b)
    witness = FakeSocket("witness")
    await a.connect("witness", witness)
    ws = FakeSocket("c1")
    serving = asyncio.create_task(a.connect("c1", ws))
    await hooking.wait()
    entering = a.get_connection("c1")
    assert entering is not None
    closer = a if close.endswith("here") else b
    assert await closer.disconnect_client("c1", code=4403, reason="banned")
    # a broadcast after the close reaches A once A's listener handled it (in order)
    await closer.broadcast("marker")
    await witness.expect("marker")
    closes = a._node.ctx.tasks.running(f"stabilizer-close-{entering.conn_id}")
    await asyncio.gather(*closes)  # (none: the close waits for the hooks)
    assert seen == ["connect-start"]
    gate.set()
    await serving
    assert (await ws.wait_closed())[0] == 4403

    async def closed() -> bool:
        return "disconnect" in seen

    await until(closed)
    assert seen == ["connect-start", "connect-end", "disconnect"]

    async def both_heard() -> bool:
        return len(heard) >= 2

    await until(both_heard)
    assert heard == ["connect", "disconnect"]
