"""A message on the Redis channels that a node cannot use (nested without end, a close code
no sender may use, or one whose handling fails for any other reason) is dropped and
counted; the node's subscription carries on, so the messages after it arrive. Before, a
CLIENT_CLOSE, USER_CLOSE, EVENT or PRESENCE payload nested deeply raised RecursionError in
the listener, which dropped its subscription and lost what came while it resubscribed,
without marking its memberships in doubt (a join written meanwhile was never applied)."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.redis.keys import KeyLayout
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

DEEP = "[" * 100_000


def envelope(kind: int, target: str | None, payload: Any) -> bytes:
    packed: bytes = msgpack.packb([1, kind, "a-peer", target, payload, None, None],
                                  use_bin_type=True)
    return packed


async def pair(make_manager: ManagerFactory, redis_url: str,
               namespace: str) -> tuple[WebSocketConnectionManager, WebSocketConnectionManager]:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, cluster_events=True,
                             heartbeat_interval=60, heartbeat_timeout=120)
    a, b = make_manager(config), make_manager(config)
    await a.start()
    await b.start()
    return a, b


def restarts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "listener failed unexpectedly" in r.getMessage()]


@pytest.mark.parametrize(("kind", "channel", "target", "payload"), [
    (9, "broadcast", "alice", DEEP),  # CLIENT_CLOSE
    (8, "broadcast", "alice", DEEP),  # USER_CLOSE
    (11, "broadcast", "room", DEEP),  # PRESENCE
    (5, "events", None, DEEP),  # EVENT
    (9, "broadcast", "alice", '{"code":1005,"reason":"x"}'),  # no valid close frame
    (9, "broadcast", "alice", '{"code":2000,"reason":"x"}'),
])
async def test_a_message_a_node_cannot_use_is_dropped_and_the_next_one_arrives(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        caplog: pytest.LogCaptureFixture, kind: int, channel: str, target: str | None,
        payload: str) -> None:
    a, b = await pair(make_manager, redis_url, namespace)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    await a.join_group("alice", "room")
    keys = KeyLayout(namespace)
    name = keys.broadcast_channel if channel == "broadcast" else keys.events_channel
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.publish(name, envelope(kind, target, payload)) >= 1
    finally:
        await redis.aclose()
    await b.broadcast("after")  # the same channel, or another: it follows the poison
    await alice.expect("after")
    await b.send_to_group("room", "group after")
    await alice.expect("group after")
    assert alice.closed is None
    assert restarts(caplog) == []
    assert a.stats.wire_errors >= 1


async def test_a_message_whose_handling_fails_costs_the_node_no_other(
        make_manager: ManagerFactory, redis_url: str, namespace: str,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await pair(make_manager, redis_url, namespace)
    alice = FakeSocket("alice")
    await a.connect("alice", alice)
    router = a._node.router
    original = router.receive
    failed: list[Any] = []

    async def receive_failing_once(envelope: Any) -> None:
        if not failed:
            failed.append(envelope)
            raise RuntimeError("a bug of ours")
        await original(envelope)

    monkeypatch.setattr(router, "receive", receive_failing_once)
    caplog.set_level(logging.WARNING)
    await b.broadcast("lost to the bug")
    await b.broadcast("after")
    await alice.expect("after")
    assert len(failed) == 1
    assert restarts(caplog) == []
    assert any("could not be handled" in r.getMessage() for r in caplog.records)
