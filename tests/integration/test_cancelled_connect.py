"""A connect cancelled after its registration went out (its caller's timeout, a client that
left during the handshake) leaves no presence behind. Before, nothing removed it while the
node lived (only a resync prunes a node's stale entries, and none was asked for): the
cluster counted it against max_cluster_connections (and the user's seats), located the
client on this node, and a send to it from another node reported success."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.memory import MemoryBackend, MemoryHub
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
Nodes = Callable[..., WebSocketConnectionManager]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("cluster", marks=pytest.mark.redis)])
async def nodes(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Nodes]:
    hub = MemoryHub()
    made: list[WebSocketConnectionManager] = []
    redis: dict[str, object] = {}
    if request.param == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url")}
    elif request.param == "cluster":
        redis = {"redis_url": request.getfixturevalue("redis_cluster").url,
                 "redis_cluster": True, "presence_buckets": 4}

    def node(node_id: str, **overrides: Any) -> WebSocketConnectionManager:
        config = WebSocketConfig(**{**QUIET, **redis, "node_id": node_id,
                                    "namespace": namespace, **overrides})
        manager = WebSocketConnectionManager(
            config, **({} if redis else {"backend": MemoryBackend(hub)}))
        made.append(manager)
        return manager

    yield node
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


async def cleanups_done(manager: WebSocketConnectionManager) -> None:
    """Wait for the node's tasks that undo a cancelled registration."""
    tasks = manager._node.ctx.tasks
    await asyncio.gather(*tasks.running("stabilizer-unregister"),
                         *tasks.running("stabilizer-redis-undo"), return_exceptions=True)


async def assert_gone(a: WebSocketConnectionManager, b: WebSocketConnectionManager) -> None:
    assert not a.is_connected("ghost")
    assert await b.locate_client("ghost") is None
    assert await b.get_cluster_connection_count() == 0
    if not b.config.history_enabled:  # (with history a send is kept for the session)
        assert not await b.send_to_client("ghost", "anyone there?")


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
        nodes: Nodes) -> None:
    """Cancelled while its session opens (history: the step after the registration)."""
    a, b = nodes("a", history_size=10), nodes("b", history_size=10)
    await a.start()
    await b.start()
    ran, _ = blocked(a._node.ctx.backend.sessions, "activate")
    connecting = asyncio.create_task(a.connect("ghost", FakeSocket("ghost")))
    await ran.wait()
    assert await b.locate_client("ghost") == "a"  # registered, not yet admitted
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await cleanups_done(a)
    await assert_gone(a, b)


@pytest.mark.redis
@pytest.mark.parametrize("nodes", ["redis", "cluster"], indirect=True)
async def test_a_connect_cancelled_while_its_registration_is_in_flight_leaves_no_presence(
        nodes: Nodes) -> None:
    """The register script ran in Redis, and its caller gave up before the reply came."""
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    registers = a._node.ctx.backend.presence._registers  # type: ignore[attr-defined]
    ran, release = blocked(registers, "_send")
    connecting = asyncio.create_task(a.connect("ghost", FakeSocket("ghost")))
    await ran.wait()
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    release.set()
    if registers._task is not None:  # the batch's task takes the reply
        await registers._task
    await cleanups_done(a)
    await assert_gone(a, b)
