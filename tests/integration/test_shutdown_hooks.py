"""graceful_shutdown(timeout) is bounded by its timeout whatever the on_disconnect hooks do,
and every socket gets its close frame without waiting for anyone's hook. Before, the
shutdown awaited each hook inside the cleanup slot its close had taken: a hook that hung
(a stalled database write) held the shutdown for good (a uvicorn lifespan with
shutdown_timeout=3 never exited), and with more clients than max_concurrent_cleanup the
later sockets waited for the earlier ones' hooks to get their close frames."""

from __future__ import annotations

import asyncio

from stabilizer import ConnectionEvent, WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
BOUND = 10.0


class StalledHook:
    """An on_disconnect hook that waits until `release` is set (forever, if never)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, event: ConnectionEvent) -> None:
        self.entered.append(event.client_id)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(event.client_id)
            raise
        self.finished.append(event.client_id)


async def connected(manager: WebSocketConnectionManager, count: int) -> list[FakeSocket]:
    sockets = [FakeSocket(f"c{index}") for index in range(count)]
    for index, sock in enumerate(sockets):
        await manager.connect(f"c{index}", sock)
    return sockets


async def test_a_hook_that_never_returns_does_not_hold_the_shutdown_past_its_timeout(
        make_manager: ManagerFactory, config: WebSocketConfig) -> None:
    manager = make_manager(config.replace(close_timeout=0.5))
    hook = StalledHook()
    manager.on_disconnect(hook)
    sockets = await connected(manager, 3)
    try:
        async with asyncio.timeout(BOUND):  # a bound: the hooks never return by themselves
            report = await manager.graceful_shutdown(timeout=0.5)
    finally:
        hook.release.set()  # (if the shutdown waited for them, it ends now)
    assert (report.closed_count, report.failed_count) == (3, 0)
    assert [sock.closed for sock in sockets] == [(1001, "server shutting down")] * 3
    assert sorted(hook.cancelled) == ["c0", "c1", "c2"]  # stopped with the node's tasks
    assert hook.finished == []


async def test_every_socket_gets_its_close_frame_while_the_hooks_still_run(
        make_manager: ManagerFactory, config: WebSocketConfig) -> None:
    manager = make_manager(config.replace(max_concurrent_cleanup=1))
    hook = StalledHook()
    manager.on_disconnect(hook)
    sockets = await connected(manager, 3)
    stopping = asyncio.create_task(manager.graceful_shutdown(timeout=BOUND))
    try:
        closes = await asyncio.gather(*(sock.wait_closed(timeout=BOUND) for sock in sockets))
        assert closes == [(1001, "server shutting down")] * 3
        assert hook.finished == []  # none of the hooks has returned yet
    finally:
        hook.release.set()
    async with asyncio.timeout(BOUND):
        report = await stopping
    assert (report.closed_count, report.failed_count) == (3, 0)
    assert sorted(hook.finished) == ["c0", "c1", "c2"]  # within the deadline, each ran out


async def test_every_hook_runs_when_the_store_stalls_the_bookkeeping_past_the_deadline(
        make_manager: ManagerFactory, config: WebSocketConfig) -> None:
    """The closer did the store's bookkeeping (the client's groups and session) before the
    hooks, and was cancelled at the deadline: with a store slower than that (a Redis
    hiccup during a deploy), no hook ran at all. The bookkeeping now ends at the deadline
    and the hooks run after it, within close_timeout."""
    manager = make_manager(config.replace(close_timeout=1.0, history_size=10))
    called: list[str] = []
    manager.on_disconnect(lambda event: called.append(event.client_id))
    await connected(manager, 3)
    sessions = manager._node.ctx.backend.sessions
    stalled = asyncio.Event()

    async def never_answered(*args: object, **kwargs: object) -> None:
        stalled.set()
        await asyncio.Event().wait()

    sessions.suspend = never_answered  # type: ignore[method-assign]  # (1001 keeps them)
    async with asyncio.timeout(BOUND):
        report = await manager.graceful_shutdown(timeout=0.3)
    assert stalled.is_set()
    assert (report.closed_count, report.failed_count) == (3, 0)
    assert sorted(called) == ["c0", "c1", "c2"]
