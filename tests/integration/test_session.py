"""Session (the serve helper's engine) with fake websockets: admission edge cases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stabilizer import ConnectionEvent, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket, SlowToClose
from tests.support.redis_server import free_port

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
BOUND = 5.0  # seconds: a bound on waits that end at once when all is well


async def test_a_session_works_when_redis_was_down_from_the_start(
    make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """No token key can be fetched: the client is served, without a reconnect token."""
    dead = f"redis://127.0.0.1:{free_port()}"
    manager = make_manager(WebSocketConfig(redis_url=dead, op_timeout=0.2, **QUIET))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice") as session:
        assert session.refused is None
        welcome = json.loads(await ws.next())
        assert welcome["type"] == "session"
        assert welcome["token"] is None
        ws.client_says("echo")
        assert await session.receive() == "echo"
        ws.client_leaves()
        assert await session.receive() is None
    assert manager.get_connection_count() == 0
    assert "no reconnect token" in caplog.text


async def test_an_error_in_the_handler_closes_with_1011_and_releases(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ws = FakeWebSocket()
    with pytest.raises(RuntimeError, match="boom"):
        async with manager.open_session(ws, "alice"):
            raise RuntimeError("boom")
    assert (await ws.wait_closed())[0] == 1011
    assert manager.get_connection_count() == 0


async def test_pongs_and_client_pings_never_reach_the_application(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice", welcome=False) as session:
        ws.client_says("pong")
        ws.client_says('{"type":"pong"}')
        ws.client_says('{"type":"ping"}')
        ws.client_says("hello")
        assert await session.receive() == "hello"
        assert json.loads(await ws.next()) == {"type": "pong"}
        assert manager.stats.pongs == 2


async def test_a_handler_whose_connection_is_being_replaced_waits_for_the_close_frame(
    make_manager: ManagerFactory,
) -> None:
    """The node closes a replaced connection in a task of its own, which may wait for a
    close slot. The replaced handler must not return before the 4500 goes out: an ASGI app
    that returns first lets the server drop the socket, and the client sees 1006 (found by
    the two-replica test after a change that removed one loop iteration from __aexit__)."""
    manager = make_manager(WebSocketConfig(max_concurrent_cleanup=1, close_timeout=5.0,
                                           **QUIET))
    stuck = SlowToClose("stuck")  # (a peer that never answers the close)
    await manager.connect("stuck", stuck)
    holder = asyncio.ensure_future(manager.disconnect("stuck"))  # takes the only slot
    await stuck.closing.wait()

    first, second = FakeWebSocket("first"), FakeWebSocket("second")
    admitted = asyncio.Event()

    async def handler() -> None:
        async with manager.open_session(first, "alice", welcome=False) as session:
            admitted.set()
            while await session.receive() is not None:
                pass

    task = asyncio.ensure_future(handler())
    await admitted.wait()
    async with manager.open_session(second, "alice", welcome=False):
        first.client_says("still here")  # wakes the first handler's receive()
        for _ in range(20):  # let the first handler run as far as it can
            await asyncio.sleep(0)
        assert not task.done(), "the replaced handler returned before its close frame"
        assert first.closed is None
        stuck.release.set()
        await task
        assert first.closed is not None
        assert first.closed[0] == 4500
    await holder


@pytest.mark.parametrize("code", [1001, 4321, 1005])
async def test_a_client_that_closes_is_reported_with_its_own_close_code(
    make_manager: ManagerFactory, code: int
) -> None:
    """on_disconnect (and the log) tell what the client said when it closed first: a tab
    closed (1001), a code of the application's, or no status (1005). Before, every close a
    client made was reported as the server's 1000 'session ended'."""
    manager = make_manager(WebSocketConfig(**QUIET))
    events: list[tuple[int, str]] = []
    manager.on_disconnect(lambda event: events.append((event.code, event.reason)))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice") as session:
        ws.client_leaves(code)
        assert await session.receive() is None
    assert events == [(code, "client closed")]


class ReceivingWebSocket(FakeWebSocket):
    """A FakeWebSocket that tells when the session waits for the client's next frame."""

    def __init__(self) -> None:
        super().__init__()
        self.receiving = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        self.receiving.set()
        return await super().receive()


async def test_a_send_that_finds_the_client_gone_leaves_a_reading_session_its_close(
    make_manager: ManagerFactory,
) -> None:
    """The client closed while its session waited for its next frame and the application
    sent to it: the write fails (the server raises), the send is not delivered, and the
    session, which reads the client's close next, reports it as the client's, not as 1011
    'send failed' (tests/e2e/test_client_close_race.py: the same with real servers)."""
    manager = make_manager(WebSocketConfig(**QUIET))
    events: list[tuple[int, str]] = []
    manager.on_disconnect(lambda event: events.append((event.code, event.reason)))
    ws = ReceivingWebSocket()
    async with manager.open_session(ws, "alice") as session:
        assert json.loads(await ws.next())["type"] == "session"
        reading = asyncio.create_task(session.receive())
        async with asyncio.timeout(BOUND):
            await ws.receiving.wait()
        ws.fail_sends = True  # (an OSError, as uvicorn's ClientDisconnected)
        assert await manager.send_to_client("alice", "too late") is False
        assert await session.send("too late") is False
        assert events == []  # left to the session, which reads the close next
        ws.client_leaves(1001)
        async with asyncio.timeout(BOUND):
            assert await reading is None
    assert events == [(1001, "client closed")]
    assert manager.get_connection("alice") is None


async def test_a_send_that_finds_the_client_gone_releases_a_session_that_does_not_read(
    make_manager: ManagerFactory,
) -> None:
    """A push-only handler never reads, so nothing would read the client's close: the
    connection is released at once (before, it stayed in the pool, refusing every frame,
    until the heartbeat removed it), reported as the client's close with the code its
    server received: this one tells none, so 1006."""
    manager = make_manager(WebSocketConfig(**QUIET))
    events: list[tuple[int, str]] = []
    disconnected = asyncio.Event()

    def record(event: ConnectionEvent) -> None:
        events.append((event.code, event.reason))
        disconnected.set()

    manager.on_disconnect(record)
    ws = FakeWebSocket()
    async with manager.open_session(ws, "alice") as session:
        assert json.loads(await ws.next())["type"] == "session"
        ws.fail_sends = True
        assert await manager.send_to_client("alice", "too late") is False
        assert manager.get_connection("alice") is None
        async with asyncio.timeout(BOUND):
            await disconnected.wait()
        assert events == [(1006, "client closed")]
        assert await session.send("too late") is False
        assert await session.receive() is None
    assert events == [(1006, "client closed")]
