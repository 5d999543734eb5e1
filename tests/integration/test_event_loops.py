"""A manager made once (a module-level one, as the seed's README has it) serves one event loop
after another: pytest's loop per test, two TestClients, uvicorn run twice in one process.
Once the loop it ran in ended, the next start (or connect) starts the node again in the
running loop, as fastapi-websocket-stabilizer 1.1.0's start() started its tasks again."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from stabilizer import (
    ShutdownError,
    WebSocketConfig,
    WebSocketConnectionManager,
    WebSocketStabilizerError,
)
from stabilizer.backends.memory import MemoryBackend
from stabilizer.results import ShutdownReport
from tests.support.fakes import FakeSocket

PINGING = {"heartbeat_interval": 0.05, "heartbeat_timeout": 60.0}


async def _pinged(manager: WebSocketConnectionManager, client_id: str, *,
                  start: bool) -> None:
    """Connect a socket in the running loop and wait for its first heartbeat ping."""
    if start:
        await manager.start()
    socket = FakeSocket(client_id)
    await manager.connect(client_id, socket)
    async with asyncio.timeout(5.0):
        while True:
            frame = await socket.frames.get()
            if isinstance(frame, str) and json.loads(frame).get("type") == "ping":
                break
    assert manager.get_active_connections() == [client_id]


@pytest.mark.parametrize("start", [True, False], ids=["start", "connect-starts"])
def test_a_manager_pings_in_each_event_loop_it_serves(start: bool) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**PINGING))

    async def second_loop() -> ShutdownReport:
        await _pinged(manager, "two", start=start)  # "one" died with the first loop
        return await manager.graceful_shutdown(timeout=2.0)

    asyncio.run(_pinged(manager, "one", start=start))
    report = asyncio.run(second_loop())
    assert (report.closed_count, report.failed_count) == (1, 0)
    with pytest.raises(ShutdownError):  # stopped: a connect is refused, in any loop
        asyncio.run(manager.connect("late", FakeSocket("late")))
    asyncio.run(_pinged(manager, "three", start=True))  # started again: a new run


def test_hooks_and_procedures_stay_registered_in_the_next_loop() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**PINGING))
    seen: list[str] = []
    manager.on_connect(lambda event: seen.append(event.client_id))

    @manager.rpc("echo")
    async def echo(call: object) -> str:
        return "echo"

    asyncio.run(_pinged(manager, "one", start=True))
    asyncio.run(_pinged(manager, "two", start=True))
    asyncio.run(manager.graceful_shutdown(timeout=2.0))
    assert seen == ["one", "two"]
    with pytest.raises(Exception, match="registered"):
        manager.add_rpc("echo", echo)  # the first registration is still there


@pytest.mark.redis
def test_a_redis_manager_delivers_across_replicas_in_the_next_loop(
    redis_url: str, namespace: str,
) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, **PINGING)
    manager = WebSocketConnectionManager(config)

    async def one_loop(client_id: str) -> None:
        await _pinged(manager, client_id, start=True)
        async with WebSocketConnectionManager(
                WebSocketConfig(redis_url=redis_url, namespace=namespace)) as other:
            socket = manager.get_connection(client_id)
            assert socket is not None
            assert client_id in [seen.client_id async for seen in other.get_cluster_connections()]
            result = await other.broadcast("to everyone")
            assert result.remote_nodes == 1
            assert await other.send_to_client(client_id, "to you") is True
            fake = socket.socket
            assert isinstance(fake, FakeSocket)
            await fake.expect("to everyone")
            await fake.expect("to you")

    asyncio.run(one_loop("one"))
    asyncio.run(one_loop("two"))
    asyncio.run(manager.graceful_shutdown(timeout=2.0))


def test_a_manager_given_its_backend_says_what_to_do_in_the_next_loop() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**PINGING), backend=MemoryBackend())
    asyncio.run(_pinged(manager, "one", start=True))
    with pytest.raises(WebSocketStabilizerError, match="given as backend="):
        asyncio.run(_pinged(manager, "two", start=True))


def test_a_manager_refuses_a_second_loop_while_its_own_still_runs() -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**PINGING))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="other-loop")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(manager.start(), loop).result(timeout=5.0)
        with pytest.raises(WebSocketStabilizerError, match="one event loop at a time"):
            asyncio.run(manager.broadcast("from the wrong loop"))
        asyncio.run_coroutine_threadsafe(manager.graceful_shutdown(timeout=2.0),
                                         loop).result(timeout=5.0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        loop.close()


def test_a_manager_refuses_another_loop_while_its_own_is_open_but_idle(
    config: WebSocketConfig,
) -> None:
    """Started with run_until_complete (a pytest-asyncio fixture of a wider loop scope): the
    loop is open, only not running, and its node still holds the client."""
    manager = WebSocketConnectionManager(config)
    own = asyncio.new_event_loop()
    try:
        socket = FakeSocket("a")
        own.run_until_complete(manager.connect("a", socket))
        for call in (lambda: manager.connect("b", FakeSocket("b")),
                     lambda: manager.send_to_client("a", "from the wrong loop"),
                     lambda: manager.graceful_shutdown(timeout=2.0)):
            with pytest.raises(WebSocketStabilizerError, match="one event loop at a time"):
                asyncio.run(call())

        async def back_in_its_own_loop() -> ShutdownReport:
            assert manager.get_active_connections() == ["a"]
            assert await manager.send_to_client("a", "still here") is True
            await socket.expect("still here")
            return await manager.graceful_shutdown(timeout=2.0)

        report = own.run_until_complete(back_in_its_own_loop())
        assert (report.closed_count, report.failed_count) == (1, 0)
        assert socket.closed is not None
        assert socket.closed[0] == 1001
        assert [task for task in asyncio.all_tasks(own) if not task.done()] == []
    finally:
        own.close()


def test_a_shutdown_after_its_loop_ended_reports_nothing_to_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**PINGING))
    asyncio.run(_pinged(manager, "one", start=True))
    with caplog.at_level("INFO", logger="stabilizer"):
        report = asyncio.run(manager.graceful_shutdown(timeout=2.0, restart=True))
    assert (report.closed_count, report.failed_count, report.close_code) == (0, 0, 1012)
    messages = [record.getMessage() for record in caplog.records]
    assert any("ended with its event loop" in message for message in messages), messages
    assert not any("starting again" in message for message in messages), messages
    with pytest.raises(ShutdownError):
        asyncio.run(manager.connect("late", FakeSocket("late")))
