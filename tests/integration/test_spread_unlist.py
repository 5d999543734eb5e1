"""The check for memberships a store that lost writes gave back, in the spread key layout.

A group's master restarted from older data can list a client again in a group the client's
own set (on another master) no longer lists; the node of the client takes it out after the
store lost writes, and for that it reads every group set in the namespace. That read ran
inside the settle, before the presence resync, under a budget sized by the local clients
alone: with many groups it timed out, the maintenance step failed before the resync, and
each later step failed the same way, so the node's clients stayed unreachable from other
nodes for good. It also ran after a reap of the node, which takes memberships away and gives
none back. The check now runs after the resync, in batches with a budget each, only after
the store lost writes; a batch that fails is logged and the check starts over later.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until
from tests.integration.test_reaped_sessions import reap_alive
from tests.integration.test_store_incarnation import LogWatch, log, resyncs
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

__all__ = ["log"]  # (a fixture)

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
SPREAD: dict[str, Any] = {"redis_spread_keys": True, "node_ttl": 1.5, "op_timeout": 0.5}
UNLISTED = "memberships a store that lost writes gave back"


def scans(manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch, *,
          hold: bool = False, fail_first: bool = False) -> asyncio.Queue[None]:
    """One item per SCAN the manager's Redis client sends from now on. `hold`: each one
    then waits for ever (until the caller's budget cancels it); `fail_first`: the first one
    fails as a lost connection would."""
    seen: asyncio.Queue[None] = asyncio.Queue()
    client: Any = manager.backend.client
    original = client.scan

    async def watched(*args: Any, **kwargs: Any) -> Any:
        seen.put_nowait(None)
        if hold:
            await asyncio.Future()
        if fail_first and seen.qsize() == 1:
            raise RedisConnectionError("connection lost in the test")
        return await original(*args, **kwargs)

    monkeypatch.setattr(client, "scan", watched)
    return seen


async def test_a_client_is_reachable_again_while_the_group_scan_after_a_restart_hangs(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis restarts from a snapshot taken before alice connected to x, and the read of
    the group sets that follows never answers (as one of tens of thousands of groups
    outlasting its budget): x registers alice's presence again all the same."""
    options: dict[str, Any] = {"redis_url": private_redis.url, "namespace": namespace,
                               **SPREAD, **QUIET}
    x = make_manager(WebSocketConfig(node_id="x", **options))
    y = make_manager(WebSocketConfig(node_id="y", **options))
    await x.start()
    await y.start()
    store = Redis.from_url(private_redis.url)
    try:
        await store.save()  # what the restart loads: no alice yet
    finally:
        await store.aclose()
    alice = FakeSocket("alice")
    await x.connect("alice", alice)
    await x.join_group("alice", "room")
    held = scans(x, monkeypatch, hold=True)
    ended = resyncs(x, monkeypatch)

    await asyncio.to_thread(private_redis.restart)
    async with asyncio.timeout(15.0):
        await ended.get()
        await held.get()  # the check began after the resync, and hangs

    assert await y.locate_client("alice") == "x"
    assert await y.get_group_members("room") == ["alice"]
    assert await y.send_to_client("alice", "hello")
    await alice.expect("hello")


async def test_a_membership_given_back_is_taken_out_at_a_later_step_when_the_check_fails(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch, log: LogWatch,
) -> None:
    """The snapshot lists alice in 'ghost', which her own group set does not list: the
    check after the restart takes her out, though its first batch fails."""
    options: dict[str, Any] = {"redis_url": private_redis.url, "namespace": namespace,
                               **SPREAD, **QUIET}
    x = make_manager(WebSocketConfig(node_id="x", **options))
    await x.start()
    await x.connect("alice", FakeSocket("alice"))
    await x.join_group("alice", "room")
    await x.connect("bob", FakeSocket("bob"))
    await x.join_group("bob", "ghost")
    store = Redis.from_url(private_redis.url)
    try:
        await store.sadd(x.backend.keys.group("ghost"), "alice")  # her set lacks it
        await store.save()  # what the restart loads
    finally:
        await store.aclose()
    seen = scans(x, monkeypatch, fail_first=True)

    await asyncio.to_thread(private_redis.restart)
    await log.until(UNLISTED)

    assert seen.qsize() > 1  # (the first one failed)
    assert await x.get_group_members("ghost") == ["bob"]
    assert await x.get_group_members("room") == ["alice"]
    assert await x.get_client_groups("alice") == ["room"]


async def test_a_reaped_node_gives_its_memberships_back_without_reading_every_group(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reap takes memberships away and gives none back: the settle after it restores
    the local ones and reads no group set beyond them."""
    def node(node_id: str) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                            node_id=node_id, **SPREAD, **QUIET))
    a, b = node("a"), node("b")
    await a.start()
    await b.start()
    await b.connect("alice", FakeSocket("alice"))
    await b.join_group("alice", "room")
    seen = scans(b, monkeypatch)
    store = Redis.from_url(redis_url)
    try:
        reaped, settled, _ = reap_alive(a, b, store, monkeypatch)
        await store.zadd(b.backend.keys.nodes, {"b": 0})  # b's keepalives stop arriving
        async with asyncio.timeout(10.0):
            await reaped.wait()
            await settled.wait()
    finally:
        await store.aclose()

    async def given_back() -> bool:  # (b restores at a step after the reap: state that
        # settles in the background, polled within a bound)
        return (await a.get_group_members("room") == ["alice"]
                and await a.locate_client("alice") == "b")

    await until(given_back, timeout=10.0)
    assert seen.empty()
