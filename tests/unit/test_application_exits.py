"""The application's code that exits (SystemExit, KeyboardInterrupt: argparse exits on bad
arguments) fails like any other exception of its: logged, and the node goes on. Left to
propagate from a task of ours, it would end the event loop and every connection with it.
(Procedures and subscribe hooks: tests/unit/test_rpc.py.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.results import ClusterEvent, ConnectionEvent
from tests.support.fakes import FakeSocket


async def test_connect_and_disconnect_hooks_that_exit_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(heartbeat_interval=3600.0,
                                                         heartbeat_timeout=7200.0))
    ended = asyncio.Event()

    def exits_on_connect(event: ConnectionEvent) -> None:
        raise SystemExit(2)

    async def interrupted_on_disconnect(event: ConnectionEvent) -> None:
        raise KeyboardInterrupt

    manager.on_connect(exits_on_connect)
    manager.on_disconnect(interrupted_on_disconnect)
    manager.on_disconnect(lambda event: ended.set())  # the hooks after it still run
    caplog.set_level(logging.ERROR, logger="stabilizer")
    await manager.start()
    try:
        await manager.connect("c1", FakeSocket())
        assert manager.get_connection_count() == 1
        await manager.disconnect("c1")
        async with asyncio.timeout(5):
            await ended.wait()
        assert manager.get_connection_count() == 0
        assert caplog.text.count("hook") >= 2
    finally:
        await manager.graceful_shutdown(timeout=1.0)


async def test_a_cluster_event_listener_that_exits_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(cluster_events=True))
    heard: list[str] = []

    def exits(event: ClusterEvent) -> None:
        raise SystemExit(1)

    manager.on_cluster_event(exits)
    manager.on_cluster_event(lambda event: heard.append(event.event))
    caplog.set_level(logging.ERROR, logger="stabilizer")
    manager._node.events.emit(ClusterEvent("connect", "c1", None, "elsewhere"))
    assert heard == ["connect"]
    assert "cluster event listener failed" in caplog.text


async def test_an_async_cluster_event_listener_that_exits_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    # (it runs in a task of the node: the exit is raised there, after emit returned)
    manager = WebSocketConnectionManager(WebSocketConfig(cluster_events=True))
    heard = asyncio.Event()

    async def exits(event: ClusterEvent) -> None:
        raise SystemExit(1)

    async def hears(event: ClusterEvent) -> None:
        heard.set()

    manager.on_cluster_event(exits)
    manager.on_cluster_event(hears)  # its task runs after the first one's
    caplog.set_level(logging.ERROR, logger="stabilizer")
    manager._node.events.emit(ClusterEvent("connect", "c1", None, "elsewhere"))
    async with asyncio.timeout(5):
        await heard.wait()
    assert "cluster event listener failed" in caplog.text
