"""When a node re-registers its presence: after the store may have lost what it had
acknowledged (it restarted, or it failed over to a replica that lagged), not after a mere
slow reply.

A reconnect storm keeps the survivors' loops so busy that a maintenance step's reply can
come later than op_timeout. Treating that as an outage made each survivor re-register every
local client in the middle of the storm. Each maintenance step now reads the store's
incarnation (run id and replication id, from INFO) and resyncs when it changed; only a store
that refuses INFO falls back to a resync after every failed step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Liveness, Resynced
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
RESYNCED = "re-registered"  # "presence of N local clients re-registered"
FAILED = "backend maintenance failed"


class LogWatch(logging.Handler):
    """Queues the messages of stabilizer's log records as they are emitted."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())
        self.messages.put_nowait(record.getMessage())

    async def until(self, fragment: str, limit: float = 15.0) -> None:
        """Wait for the next message that contains `fragment`."""
        async with asyncio.timeout(limit):
            while fragment not in await self.messages.get():
                pass

    def count(self, fragment: str) -> int:
        return sum(1 for message in self.seen if fragment in message)


@pytest.fixture
def log() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("stabilizer")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


def keepalives(manager: WebSocketConnectionManager,
               monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[bool]:
    """The outcome of each of the manager's keepalives from now on (True: it succeeded)."""
    outcomes: asyncio.Queue[bool] = asyncio.Queue()
    liveness = manager.backend.liveness
    original = liveness.keepalive

    async def watched(*args: Any, **kwargs: Any) -> Liveness:
        try:
            result = await original(*args, **kwargs)
        except BaseException:
            outcomes.put_nowait(False)
            raise
        outcomes.put_nowait(True)
        return result

    monkeypatch.setattr(liveness, "keepalive", watched)
    return outcomes


async def succeeded(outcomes: asyncio.Queue[bool], count: int) -> None:
    """Wait for `count` more keepalives that succeed."""
    async with asyncio.timeout(20):
        while count:
            count -= await outcomes.get()


async def test_a_step_slower_than_op_timeout_on_the_same_store_resyncs_nothing(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    log: LogWatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies later than op_timeout (as a loop busy with a storm reads them) fail a step;
    the store neither restarted nor failed over, nothing was written, so nothing is
    re-registered once replies are on time again."""
    async with FaultProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(
            redis_url=proxy.url, namespace=namespace, node_id="a", node_ttl=3.0,
            op_timeout=0.3, **QUIET))
        outcomes = keepalives(manager, monkeypatch)
        await manager.start()
        await manager.connect("alice", FakeSocket())
        await succeeded(outcomes, 1)
        before = log.count(RESYNCED)

        proxy.set_latency(1.0)
        await log.until(FAILED)
        proxy.restore()
        await succeeded(outcomes, 2)  # the step after the failure ran to its end

        assert log.count(RESYNCED) == before
        assert await manager.locate_client("alice") == "a"


async def test_a_store_that_refuses_info_resyncs_after_a_slow_step(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    log: LogWatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without INFO (an ACL that leaves it out) a failover cannot be told from a slow reply:
    a failed step is followed by a resync, as before incarnations were read."""
    admin = Redis.from_url(private_redis.url)
    await admin.execute_command("ACL", "SETUSER", "noinfo", "on", ">secret", "~*", "&*",
                                "+@all", "-info")
    async with FaultProxy(private_redis.port) as proxy:
        manager = make_manager(WebSocketConfig(
            redis_url=f"redis://noinfo:secret@127.0.0.1:{proxy.port}", namespace=namespace,
            node_id="a", node_ttl=3.0, op_timeout=0.3, **QUIET))
        assert await manager.backend.liveness.incarnation() is None
        outcomes = keepalives(manager, monkeypatch)
        await manager.start()
        await manager.connect("alice", FakeSocket())
        await succeeded(outcomes, 1)
        assert log.count("refuses INFO") == 1

        proxy.set_latency(1.0)
        await log.until(FAILED)
        proxy.restore()
        await log.until(RESYNCED)
        assert await manager.locate_client("alice") == "a"
    await admin.aclose()


async def test_the_incarnation_changes_when_the_store_restarts(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           **QUIET))
    await manager.start()
    before = await manager.backend.liveness.incarnation()
    assert before is not None
    assert await manager.backend.liveness.incarnation() == before
    await asyncio.to_thread(private_redis.restart)
    after = None
    async with asyncio.timeout(10):
        while after is None:  # the first call may meet the connection the restart closed
            with contextlib.suppress(Exception):
                after = await manager.backend.liveness.incarnation()
    assert after != before


async def test_a_server_that_names_no_run_id_has_no_incarnation(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that speaks the protocol but is not Redis itself may leave the run id out:
    its incarnation is unknown, not one that never changes."""
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET))
    liveness = manager.backend.liveness

    async def info() -> tuple[dict[str, Any], dict[str, Any]]:
        return {"": {"redis_version": "7.2.0"}}, {"": {"role": "master"}}

    monkeypatch.setattr(liveness, "_info", info)
    assert await liveness.incarnation() is None


@pytest.fixture
async def other_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(extra_args=["--repl-diskless-sync-delay", "0"])
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.__exit__)


async def synced(master: Redis) -> bool:
    """Wait (in Redis: WAIT blocks until a replica acknowledges the master's offset, so a
    replica still connecting is waited for) until one replica has all of `master`'s data."""
    return bool(await master.execute_command("WAIT", 1, 15000) == 1)


async def test_writes_a_failover_lost_are_written_again_though_no_step_failed(
    private_redis: RedisServer, other_redis: RedisServer, namespace: str,
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica that stopped following its master takes over its data set, as a failover to
    a lagging replica does: what the master acknowledged after the replica's last sync is
    gone, while the node entry (older) is still there and no step failed. The store's new
    replication id makes the next step re-register the lost client."""
    store, replica = Redis.from_url(private_redis.url), Redis.from_url(other_redis.url)
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           node_id="a", node_ttl=6.0, **QUIET))
    outcomes = keepalives(manager, monkeypatch)
    try:
        await store.config_set("repl-diskless-sync-delay", 0)
        await manager.start()
        await manager.connect("alice", FakeSocket())
        await replica.replicaof("127.0.0.1", private_redis.port)
        assert await synced(store)  # the replica has alice
        await replica.replicaof("NO", "ONE")  # it lags from now on
        await manager.connect("bob", FakeSocket())  # acknowledged by the master alone

        await succeeded(outcomes, 1)  # the next step is node_ttl / 3 (2 s) away
        await store.replicaof("127.0.0.1", other_redis.port)  # the lagging data set wins
        assert await synced(replica)  # the lagging data set replaced the store's
        await store.replicaof("NO", "ONE")
        assert await manager.locate_client("bob") is None  # lost with the failover
        assert await manager.locate_client("alice") == "a"

        await succeeded(outcomes, 2)
        assert await manager.locate_client("bob") == "a"
    finally:
        await store.aclose()
        await replica.aclose()


def resyncs(manager: WebSocketConnectionManager,
            monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[None]:
    """One item each time one of the manager's presence resyncs ended (the settle's last
    step: the group memberships were settled before it)."""
    ended: asyncio.Queue[None] = asyncio.Queue()
    liveness = manager.backend.liveness
    original = liveness.resync

    async def watched(*args: Any, **kwargs: Any) -> Resynced:
        result = await original(*args, **kwargs)
        ended.put_nowait(None)
        return result

    monkeypatch.setattr(liveness, "resync", watched)
    return ended


def restoring(manager: WebSocketConnectionManager, url: str, group: str,
              monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[set[bytes]]:
    """The members the store lists in `group` as each of the manager's settles that give
    memberships back begins (read before it: the node settles as soon as it is subscribed
    again, perhaps before the test could look)."""
    found: asyncio.Queue[set[bytes]] = asyncio.Queue()
    groups = manager.backend.groups
    original = groups.reconcile

    async def watched(*args: Any, **kwargs: Any) -> dict[str, list[str]]:
        if kwargs.get("restore"):
            reader = Redis.from_url(url)
            try:
                found.put_nowait(await reader.smembers(manager.backend.keys.group(group)))
            finally:
                await reader.aclose()
        return await original(*args, **kwargs)

    monkeypatch.setattr(groups, "reconcile", watched)
    return found


async def test_memberships_a_restart_from_an_older_snapshot_lost_are_given_back(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis restarts from a snapshot older than its last writes (RDB, AOF everysec): the
    node entry is there (older), so only the new run id tells the node that the store lost
    writes. The settle gives back the memberships the store lacks, as after an empty
    restart, instead of dropping the local ones to match the stale store."""
    options: dict[str, Any] = {"redis_url": private_redis.url, "namespace": namespace,
                               "node_ttl": 3.0, "op_timeout": 0.5, **QUIET}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    early, late = FakeSocket("early"), FakeSocket("late")
    store = Redis.from_url(private_redis.url)
    try:
        await a.start()
        await b.start()
        await b.connect("early", early)
        await b.join_group("early", "room", presence={"v": 1})
        await store.save()  # what the restart loads
        await b.connect("late", late)
        await b.join_group("late", "room", presence={"v": 2})
        await b.join_group("early", "news")
        ended = resyncs(b, monkeypatch)
        found = restoring(b, private_redis.url, "news", monkeypatch)

        await asyncio.to_thread(private_redis.restart)
        await store.aclose()
        store = Redis.from_url(private_redis.url)  # (the restart closed its connection)
        async with asyncio.timeout(15.0):
            assert await found.get() == set()  # lost, when the settle that restores began
            await ended.get()

        assert sorted(await a.get_group_members("room")) == ["early", "late"]
        assert await a.get_group_members("news") == ["early"]
        assert await a.get_presence("room") == {
            "early": [{"client_id": "early", "meta": {"v": 1}}],
            "late": [{"client_id": "late", "meta": {"v": 2}}]}
        assert await a.locate_client("late") == "b"
        for client_id, groups in (("early", {"room", "news"}), ("late", {"room"})):
            connection = b.get_connection(client_id)
            assert connection is not None
            assert connection.groups == groups
        await a.send_to_group("news", "to-news")
        await early.expect("to-news")
    finally:
        await store.aclose()


async def test_memberships_a_failover_to_a_lagging_replica_lost_are_given_back(
    private_redis: RedisServer, other_redis: RedisServer, namespace: str,
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a failover to a replica that missed the newest writes: a join the master
    acknowledged is gone; the new replication id makes the settle give it back."""
    store, replica = Redis.from_url(private_redis.url), Redis.from_url(other_redis.url)
    manager = make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                           node_id="a", node_ttl=3.0, **QUIET))
    alice = FakeSocket("alice")
    try:
        await store.config_set("repl-diskless-sync-delay", 0)
        await manager.start()
        await manager.connect("alice", alice)
        await manager.join_group("alice", "room")
        await replica.replicaof("127.0.0.1", private_redis.port)
        assert await synced(store)  # the replica has alice in room
        await replica.replicaof("NO", "ONE")  # it lags from now on
        await manager.join_group("alice", "news")  # acknowledged by the master alone
        ended = resyncs(manager, monkeypatch)

        await store.replicaof("127.0.0.1", other_redis.port)  # the lagging data set wins
        assert await synced(replica)
        await store.replicaof("NO", "ONE")
        assert await manager.get_group_members("news") == []  # lost with the failover
        async with asyncio.timeout(15.0):
            await ended.get()

        assert await manager.get_group_members("news") == ["alice"]
        assert await manager.get_client_groups("alice") == ["news", "room"]
        connection = manager.get_connection("alice")
        assert connection is not None
        assert connection.groups == {"news", "room"}
    finally:
        await store.aclose()
        await replica.aclose()


async def test_a_live_socket_is_not_closed_for_a_connection_an_older_snapshot_names(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The snapshot names the client's older connection, on another node: the resync took
    that for the client's live one elsewhere and closed the live socket here with 4500
    (final for the bundled clients), and the client was connected nowhere. After an
    incarnation change every local connection claims its client: the newer one wins."""
    options: dict[str, Any] = {"redis_url": private_redis.url, "namespace": namespace,
                               "node_ttl": 3.0, "op_timeout": 0.5, **QUIET}
    a = make_manager(WebSocketConfig(node_id="a", **options))
    b = make_manager(WebSocketConfig(node_id="b", **options))
    store = Redis.from_url(private_redis.url)
    try:
        await a.start()
        await b.start()
        first, moved = FakeSocket("first"), FakeSocket("moved")
        await a.connect("mover", first)
        await store.save()  # what the restart loads: mover on a
        await b.connect("mover", moved)  # the client moves to b (a's socket replaced)
        await first.wait_closed(timeout=5.0)
        await a.graceful_shutdown(timeout=2.0)  # (a is gone: only b settles)
        ended = resyncs(b, monkeypatch)

        await asyncio.to_thread(private_redis.restart)
        async with asyncio.timeout(15.0):
            await ended.get()

        assert moved.closed is None
        assert b.is_connected("mover")
        assert await b.locate_client("mover") == "b"
    finally:
        await store.aclose()
