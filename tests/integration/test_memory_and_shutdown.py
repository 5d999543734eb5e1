"""Two README promises about a node's own housekeeping:

- "Over max_total_memory, connections are evicted by memory_eviction_policy ... with 4001,
  at admission and every memory_check_interval seconds."
- "graceful_shutdown(timeout) returns a ShutdownReport ... and raises ShutdownError only if a
  loop or the backend failed to stop."
"""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import (
    CloseCode,
    MemoryBackend,
    ShutdownError,
    WebSocketConfig,
)
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("policy", ["lru", "fifo"])
async def test_the_memory_check_loop_evicts_a_node_that_grew_over_its_limit(
    make_manager: ManagerFactory, policy: str
) -> None:
    """Both clients fit at admission; the node grows past max_total_memory afterwards and
    nothing is admitted again, so only the periodic check can evict."""
    manager = make_manager(WebSocketConfig(
        max_total_memory=4000, memory_check_interval=0.1, memory_eviction_policy=policy,
        **QUIET))
    first, second = FakeSocket("first"), FakeSocket("second")
    await manager.connect("first", first)  # the oldest, and the least recently active
    await manager.connect("second", second)
    assert manager.get_memory_usage()["total_memory"] < 4000

    await manager.set_user_data("first", "blob", "x" * 5000)  # no admission check here

    code, _ = await first.wait_closed(timeout=10.0)  # a bound: the loop runs every 0.1 s
    assert code == CloseCode.MEMORY_EVICTED
    assert second.closed is None  # evicting the first freed enough
    assert manager.get_active_connections() == ["second"]
    assert manager.stats.memory_evictions == 1


@pytest.mark.parametrize("policy", ["lru", "fifo"])
async def test_a_stalled_reader_holding_the_memory_is_evicted_before_healthy_clients(
    make_manager: ManagerFactory, policy: str
) -> None:
    """Five healthy clients connected first, then one that stopped reading; a broadcast
    storm fills only the stalled one's outbox, and the last frame it is offered takes the
    node over its limit. Closing the healthy ones would free a few hundred bytes each."""
    manager = make_manager(WebSocketConfig(
        max_total_memory=20_000, memory_check_interval=0.05, max_queue_size=1000,
        memory_eviction_policy=policy, **QUIET))
    healthy = [FakeSocket(f"good{n}") for n in range(5)]
    for sock in healthy:
        await manager.connect(sock.name, sock)
    hog = FakeSocket("hog")
    await manager.connect("hog", hog)
    hog.gate.clear()  # its first send waits; the frames after it queue in its outbox

    for n in range(20):
        await manager.broadcast(f"{n:03d}" + "x" * 500)
    for sock in healthy:
        await sock.expect(f"{19:03d}" + "x" * 500)
    assert manager.get_memory_usage()["total_memory"] < 20_000  # no check evicts yet
    await manager.send_to_client("hog", "y" * 10_000)  # only queued: no activity

    code, _ = await hog.wait_closed(timeout=10.0)  # a bound: the check runs every 0.05 s
    assert code == CloseCode.MEMORY_EVICTED
    assert [sock.closed for sock in healthy] == [None] * 5
    assert sorted(manager.get_active_connections()) == [sock.name for sock in healthy]
    assert manager.stats.memory_evictions == 1


# ----------------------------------------------------------------------------- shutdown


async def test_a_task_that_will_not_stop_makes_shutdown_raise_after_closing_everything(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(close_timeout=0.3, cluster_events=True, **QUIET))
    release, running = asyncio.Event(), asyncio.Event()

    @manager.on_cluster_event
    async def stubborn(event: object) -> None:  # a listener that swallows cancellation
        running.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    sock = FakeSocket()
    await manager.connect("alice", sock)  # its connect event starts the listener's task
    async with asyncio.timeout(3):
        await running.wait()
    try:
        with pytest.raises(ShutdownError, match="stabilizer-event did not stop"):
            await manager.graceful_shutdown(timeout=2.0)
    finally:
        release.set()
    assert (await sock.wait_closed())[0] == CloseCode.GOING_AWAY  # everything else was done
    assert manager.phase.value == "stopped"


class BackendThatWillNotClose(MemoryBackend):
    """An embedded backend whose close fails."""

    async def aclose(self) -> None:
        await super().aclose()
        raise RuntimeError("close failed")


async def test_a_backend_that_fails_to_close_makes_shutdown_raise(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET), backend=BackendThatWillNotClose())
    sock = FakeSocket()
    await manager.connect("alice", sock)
    with pytest.raises(ShutdownError, match="close failed"):
        await manager.graceful_shutdown(timeout=2.0)
    assert (await sock.wait_closed())[0] == CloseCode.GOING_AWAY


@pytest.mark.redis
async def test_a_clean_shutdown_on_redis_reports_and_does_not_raise(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           **QUIET))
    socks = [FakeSocket(str(i)) for i in range(3)]
    for sock in socks:
        await manager.connect(sock.name, sock)
    report = await manager.graceful_shutdown(timeout=5.0)
    assert (report.closed_count, report.failed_count) == (3, 0)


@pytest.mark.redis
async def test_redis_unreachable_at_shutdown_is_no_shutdown_error(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    async with TcpProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(redis_url=proxy.url, namespace=namespace,
                                               op_timeout=0.3, **QUIET))
        sock = FakeSocket()
        await manager.connect("alice", sock)
        proxy.freeze()  # Redis stops answering; the node has not noticed yet

        report = await manager.graceful_shutdown(timeout=2.0)

        assert (report.closed_count, report.failed_count) == (1, 0)
