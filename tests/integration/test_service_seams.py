"""Seams between services, driven step by step on the embedded backend."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stabilizer import CloseCode, MemoryBackend, MemoryHub, WebSocketConfig
from stabilizer.backends.base import Presence, Registration
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket, FakeWebSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def test_a_kick_that_arrives_before_the_register_reply_closes_the_socket(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving behind the split brain, made deterministic: node a's register is
    done in the store but its reply is late; node b registers the same id and kicks a's
    connection, which is not in a's pool yet."""
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **QUIET), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **QUIET), backend=MemoryBackend(hub))
    await a.start()
    await b.start()
    registered, reply = asyncio.Event(), asyncio.Event()
    register = a.backend.presence.register

    async def late_reply(presence: Presence, **options: Any) -> Registration:
        outcome = await register(presence, **options)
        registered.set()
        await reply.wait()
        return outcome

    monkeypatch.setattr(a.backend.presence, "register", late_reply)
    on_a, on_b = FakeSocket("on-a"), FakeSocket("on-b")
    admitting = asyncio.create_task(a.connect("x", on_a))
    async with asyncio.timeout(3):
        await registered.wait()
        await b.connect("x", on_b)
        while hub.inboxes["a"].qsize():  # a's listener takes the kick while a admits
            await asyncio.sleep(0)
    reply.set()
    await admitting
    assert (await on_a.wait_closed())[0] == CloseCode.REPLACED
    assert on_b.closed is None
    assert await a.locate_client("x") == "b"
    assert not a.is_connected("x")


async def test_a_cancelled_broadcast_cancels_its_publish(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET), backend=MemoryBackend(MemoryHub()))
    await manager.start()
    started, outcome = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def hanging_publish(envelope: bytes) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.set_result("cancelled")
            raise
        return 0

    monkeypatch.setattr(manager.backend.routing, "publish", hanging_publish)
    broadcast = asyncio.create_task(manager.broadcast("hello"))
    async with asyncio.timeout(3):
        await started.wait()
        broadcast.cancel()
        with pytest.raises(asyncio.CancelledError):
            await broadcast
        assert await outcome == "cancelled"


async def test_shutdown_stops_every_task_the_node_started(
    make_manager: ManagerFactory,
) -> None:
    hub = MemoryHub()
    manager = make_manager(WebSocketConfig(node_id="solo", **QUIET), backend=MemoryBackend(hub))
    await manager.start()
    await manager.connect("alice", FakeSocket("alice"))

    def of_node() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_name().endswith(":solo")]

    assert sorted(task.get_name() for task in of_node()) == [
        "stabilizer-loop-heartbeat:solo", "stabilizer-loop-listener:solo",
        "stabilizer-loop-maintenance:solo", "stabilizer-teardown:solo"]
    await manager.graceful_shutdown(timeout=2.0)
    assert of_node() == []


@pytest.mark.parametrize("same_node", [True, False])
async def test_a_replaced_connection_leaves_its_groups_without_history(
    make_manager: ManagerFactory, same_node: bool,
) -> None:
    """A new connection of a client starts with no groups, as after a disconnect; the old
    membership must not linger in the store (where nothing would ever remove it)."""
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **QUIET), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **QUIET), backend=MemoryBackend(hub))
    await a.connect("x", FakeSocket("old"))
    await a.join_group("x", "room")
    newer = FakeSocket("new")
    await (a if same_node else b).connect("x", newer)
    assert await a.get_client_groups("x") == []
    assert await a.get_group_members("room") == []
    await (a if same_node else b).join_group("x", "room")
    result = await (b if same_node else a).send_to_group("room", "hello")
    assert result.remote_nodes + result.succeeded == 1
    assert await newer.next() == "hello"
    await (a if same_node else b).disconnect("x")
    assert await a.get_group_members("room") == []


async def test_live_messages_during_a_replay_follow_the_resume_frame(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replayed messages, then the resume frame, then what arrived live meanwhile (once)."""
    history = {"history_size": 100, **QUIET}
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **history), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **history), backend=MemoryBackend(hub))
    await a.start()
    await b.start()
    first = FakeWebSocket("first")
    async with a.open_session(first, "alice") as session:
        welcome = json.loads(await first.next())
        seen = json.loads(await await_broadcast(a, "before", first))
        positions = {"all": [seen["offset"], seen["epoch"]]}
        first.client_leaves()  # the client goes away: its session stays resumable
        async for _ in session:
            pass
    await a.broadcast("missed")
    read = b.backend.history.read

    async def live_traffic_after_the_read(stream: str, after: int, epoch: str,
                                          **bounds: int) -> Any:
        found = await read(stream, after, epoch, **bounds)
        if stream == "all":
            await a.broadcast("live")  # after the replay read it: held for alice on b
            while hub.inboxes["b"].qsize():
                await asyncio.sleep(0)
        return found

    monkeypatch.setattr(b.backend.history, "read", live_traffic_after_the_read)
    second = FakeWebSocket("second")
    resumed = b.open_session(second, "alice", token=welcome["token"],
                             positions=json.dumps(positions), welcome=False)
    await resumed.__aenter__()
    frames = [json.loads(await second.next()) for _ in range(3)]
    assert [(f["type"], f.get("data")) for f in frames] == [
        ("message", "missed"), ("resume", None), ("message", "live")]
    await resumed.__aexit__(None, None, None)


async def await_broadcast(manager: Any, text: str, sock: FakeWebSocket) -> str:
    """Broadcast `text` and return the frame `sock` receives for it."""
    await manager.broadcast(text)
    return await sock.next()


@pytest.mark.parametrize(("environ", "warned"), [
    ({"WEB_CONCURRENCY": "4"}, True), ({"SERVER_SOFTWARE": "gunicorn/23.0"}, True),
    ({"WEB_CONCURRENCY": "1"}, False), ({}, False)])
async def test_the_embedded_backend_warns_under_several_server_workers(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, environ: dict[str, str], warned: bool,
) -> None:
    for name in ("WEB_CONCURRENCY", "SERVER_SOFTWARE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level("WARNING", logger="stabilizer"):
        await make_manager(WebSocketConfig(**QUIET)).start()
        await make_manager(WebSocketConfig(**QUIET), backend=MemoryBackend(MemoryHub())).start()
    warnings = [r for r in caplog.records if "server workers" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)  # never for a backend other nodes share


# ----------------------------------------------------------------------------- review fixes


async def early_kick(a: Any, b: Any, hub: MemoryHub, monkeypatch: pytest.MonkeyPatch,
                     admit: Any, take: Any = None) -> Any:
    """Run `admit()` on node a while node b takes the same client id (`take()`, by default
    a plain connect) between a's register and its reply, so a's pending connection is
    kicked; return what `admit()` returned."""
    registered, reply = asyncio.Event(), asyncio.Event()
    register = a.backend.presence.register

    async def late_reply(presence: Presence, **options: Any) -> Registration:
        outcome = await register(presence, **options)
        registered.set()
        await reply.wait()
        return outcome

    monkeypatch.setattr(a.backend.presence, "register", late_reply)
    admitting = asyncio.create_task(admit())
    async with asyncio.timeout(3):
        await registered.wait()
        monkeypatch.setattr(a.backend.presence, "register", register)
        await (take() if take is not None else b.connect("x", FakeSocket("on-b")))
        while hub.inboxes["a"].qsize():
            await asyncio.sleep(0)
        reply.set()
        return await admitting


async def test_after_an_early_kick_the_handlers_own_disconnect_does_nothing(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **QUIET), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **QUIET), backend=MemoryBackend(hub))
    await a.start()
    await b.start()
    sock = FakeSocket("on-a")

    async def seed_style_handler() -> None:
        await a.connect("x", sock)
        assert (await sock.wait_closed())[0] == CloseCode.REPLACED
        await a.disconnect("x")  # its cleanup after its socket ended: a no-op

    await early_kick(a, b, hub, monkeypatch, seed_style_handler)


async def test_a_resume_kicked_while_admitted_joins_no_group(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed connection must not be put back in its groups by the resume that follows."""
    history = {"history_size": 50, **QUIET}
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **history), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **history), backend=MemoryBackend(hub))
    await a.start()
    await b.start()
    first = FakeWebSocket("first")
    async with a.open_session(first, "x") as session:
        await a.join_group("x", "room")
        token = a.generate_reconnect_token("x")
        first.client_leaves()
        async for _ in session:
            pass

    second = FakeWebSocket("second")
    load = a.backend.sessions.load

    async def load_after_the_close(client_id: str) -> Any:
        # the session loads while the kicked connection's closer runs to its end
        await second.closed_event.wait()
        for _ in range(10):
            await asyncio.sleep(0)
        return await load(client_id)

    monkeypatch.setattr(a.backend.sessions, "load", load_after_the_close)

    async def resume() -> Any:
        resumed = a.open_session(second, "x", token=token, welcome=False)
        await resumed.__aenter__()
        return resumed

    async def resume_on_b() -> None:  # keeps the session (and its groups) alive
        other = b.open_session(FakeWebSocket("on-b"), "x", welcome=False,
                               token=a.generate_reconnect_token("x"))
        await other.__aenter__()

    resumed = await early_kick(a, b, hub, monkeypatch, resume, resume_on_b)
    assert resumed.conn is not None
    assert not resumed.conn.is_open
    async with asyncio.timeout(3):
        while a.get_connection("x") is not None or "a" in hub.group_nodes.get("room", ()):
            await asyncio.sleep(0.01)
    result = await a.send_to_group("room", "anyone here?")
    assert result.total == 0  # no local member left behind on a


async def test_a_handler_cancelled_during_the_connect_hooks_leaves_nothing_behind(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    in_hook = asyncio.Event()

    @manager.on_connect
    async def slow_hook(event: object) -> None:
        in_hook.set()
        await asyncio.Event().wait()

    handler = asyncio.create_task(manager.connect("alice", FakeSocket("alice")))
    async with asyncio.timeout(3):
        await in_hook.wait()
    handler.cancel()
    await asyncio.gather(handler, return_exceptions=True)
    assert manager.get_connection("alice") is None
    assert manager.get_connection_count() == 0


async def test_a_broadcast_when_the_node_stops_reports_instead_of_raising(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET), backend=MemoryBackend(MemoryHub()))
    await manager.start()
    started = asyncio.Event()

    async def hanging_publish(envelope: bytes) -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    monkeypatch.setattr(manager.backend.routing, "publish", hanging_publish)
    broadcast = asyncio.create_task(manager.broadcast("hello"))
    async with asyncio.timeout(5):
        await started.wait()
        await manager.graceful_shutdown(timeout=1.0)  # stops the node's tasks, the publish too
        result = await broadcast
    assert result.remote_error is not None
    assert "stopping" in result.remote_error


async def test_one_maintenance_step_sweeps_until_no_more_sessions_are_due(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dead replica's clients can outnumber one sweep's limit: the step sweeps again
    while a sweep ended as many as it may, so they all end (and leave their channels)
    together, not one batch per step (node_ttl / 3 apart)."""
    from stabilizer.services.maintenance import SWEEP_LIMIT

    manager = make_manager(WebSocketConfig(**QUIET, node_ttl=3600.0),
                           backend=MemoryBackend(MemoryHub()))
    due = [f"gone-{n}" for n in range(2 * SWEEP_LIMIT + 37)]
    limits: list[int] = []
    last = asyncio.Event()

    async def sweep(limit: int = SWEEP_LIMIT) -> list[str]:
        limits.append(limit)
        ended, due[:] = due[:limit], due[limit:]
        if len(ended) < limit:
            last.set()
        return ended

    monkeypatch.setattr(manager.backend.sessions, "sweep", sweep)
    await manager.start()  # the first maintenance step runs at once
    async with asyncio.timeout(5):
        await last.wait()
    # the step went on (or stopped) without suspending after the short sweep: a fourth
    # call would be here by now
    assert limits == [SWEEP_LIMIT] * 3
    assert due == []
