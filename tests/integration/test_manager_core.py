"""The manager on one node (embedded backend) with fake sockets: the seed's API and beyond."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

import pytest

from stabilizer import (
    BroadcastFailedError,
    CloseCode,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    ConnectionTimeoutError,
    InvalidClientIdError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    TokenExpiredError,
    WebSocketConfig,
    WebSocketConnectionManager,
    WebSocketStabilizerError,
)
from stabilizer.pure.tokens import TokenCodec
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def test_broadcast_reaches_everyone_but_the_excluded_client(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sockets = {name: FakeSocket(name) for name in ("alice", "bob", "carol")}
    for name, sock in sockets.items():
        await manager.connect(name, sock)

    result = await manager.broadcast({"text": "hi"}, exclude_client="alice")

    assert (result.total, result.succeeded, result.failed) == (2, 2, 0)
    assert await sockets["bob"].next_json() == {"text": "hi"}
    assert await sockets["carol"].next_json() == {"text": "hi"}
    assert sockets["alice"].texts() == []


async def test_send_to_client_returns_false_for_unknown_and_never_raises(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    broken = FakeSocket("broken", fail_sends=True)
    await manager.connect("broken", broken)

    assert await manager.send_to_client("nobody", "x") is False
    assert await manager.send_to_client("", "x") is False
    assert await manager.send_to_client(None, "x") is False  # type: ignore[arg-type]
    assert await manager.send_to_client("broken", "x") is False
    assert (await broken.wait_closed())[0] == CloseCode.INTERNAL_ERROR
    assert not manager.is_connected("broken")


async def test_send_to_client_delivers_text_json_and_binary(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sock = FakeSocket()
    await manager.connect("a.b.c", sock)

    assert await manager.send_to_client("a.b.c", "plain")
    assert await manager.send_to_client("a.b.c", {"k": "é"})
    assert await manager.send_to_client("a.b.c", b"\x00\x01")

    assert [await sock.next() for _ in range(3)] == ["plain", '{"k":"é"}', b"\x00\x01"]
    with pytest.raises(TypeError):
        await manager.send_to_client("a.b.c", object())  # type: ignore[arg-type]


async def test_second_connect_replaces_the_first_and_closes_it_as_replaced(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    old, new = FakeSocket("old"), FakeSocket("new")
    await manager.connect("alice", old)
    await manager.connect("alice", new)

    assert (await old.wait_closed())[0] == CloseCode.REPLACED
    assert manager.get_connection_count() == 1
    assert await manager.send_to_client("alice", "hello")
    assert await new.next() == "hello"


async def test_old_handler_disconnect_does_not_remove_the_new_socket(
    make_manager: ManagerFactory,
) -> None:
    """The seed's reconnect race: the old handler's disconnect(client_id) closed the new one."""
    manager = make_manager(WebSocketConfig(**QUIET))
    old, new = FakeSocket("old"), FakeSocket("new")
    old_connected = asyncio.Event()
    replaced = asyncio.Event()

    async def old_handler() -> None:  # the seed README's pattern
        await manager.connect("alice", old)
        old_connected.set()
        await replaced.wait()  # ... receive_text() raises WebSocketDisconnect here ...
        await manager.disconnect("alice")

    async def new_handler() -> None:
        await old_connected.wait()
        await manager.connect("alice", new)
        replaced.set()

    await asyncio.gather(old_handler(), new_handler())

    assert new.closed is None
    assert manager.is_connected("alice")
    assert await manager.send_to_client("alice", "still here")
    assert await new.next() == "still here"


async def test_disconnect_of_unknown_id_raises(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    with pytest.raises(ConnectionNotFoundError):
        await manager.disconnect("ghost")


async def test_disconnect_closes_with_normal_code_and_forgets_the_client(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sock = FakeSocket()
    await manager.connect("alice", sock)
    await manager.disconnect("alice")
    assert (await sock.wait_closed())[0] == CloseCode.NORMAL
    assert manager.get_active_connections() == []
    with pytest.raises(ConnectionNotFoundError):
        await manager.disconnect("alice")


@pytest.mark.parametrize("bad", ["", "x" * 322, "\ud800", 42])
async def test_connect_rejects_unusable_client_ids(
    make_manager: ManagerFactory, bad: object
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    with pytest.raises(InvalidClientIdError) as info:
        await manager.connect(bad, FakeSocket())  # type: ignore[arg-type]
    assert isinstance(info.value, ConnectionNotFoundError)  # what the seed raised for ""
    assert manager.get_connection_count() == 0


async def test_hostile_client_ids_are_plain_keys(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ids = ["a:b", "*", "{ns}", "ünïcødé ✓", "x" * 256, "a.b.c", "\n\t"]
    sockets = {cid: FakeSocket(cid) for cid in ids}
    for cid, sock in sockets.items():
        await manager.connect(cid, sock)
    for cid, sock in sockets.items():
        assert await manager.send_to_client(cid, cid)
        assert await sock.next() == cid
    assert sorted(manager.get_active_connections()) == sorted(ids)


async def test_max_connections_refuses_new_ids_but_not_replacements(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(max_connections=2, **QUIET))
    await manager.connect("a", FakeSocket())
    await manager.connect("b", FakeSocket())
    with pytest.raises(ConnectionLimitExceededError):
        await manager.connect("c", FakeSocket())
    await manager.connect("a", FakeSocket())  # a replacement does not add a connection
    assert manager.get_connection_count() == 2


async def test_slow_socket_never_delays_the_others_and_overflows_with_1013(
    make_manager: ManagerFactory,
) -> None:
    # a write that never ends is not cut short for an hour: only the outbox bound acts here
    manager = make_manager(WebSocketConfig(max_queue_size=4, write_timeout=3600.0, **QUIET))
    slow, fast = FakeSocket("slow"), FakeSocket("fast")
    slow.gate.clear()  # the transport is paused: send() blocks, and it is never released
    await manager.connect("slow", slow)
    await manager.connect("fast", fast)

    results = []
    # the gate stays closed throughout: a broadcast that waited on the slow socket would
    # never return, and this generous bound only turns such a hang into a failure
    async with asyncio.timeout(60):
        for i in range(10):
            results.append(await manager.broadcast(f"m{i}"))
            assert await fast.next() == f"m{i}"
    assert slow.send_started.is_set()  # its write began and is still blocked
    assert slow.sent == []

    assert (await slow.wait_closed())[0] == CloseCode.TRY_AGAIN_LATER
    assert sum(r.failed for r in results) >= 1
    failed_ids = {cid for r in results for cid, _ in r.errors}
    assert failed_ids == {"slow"}
    assert manager.stats.overflow_closes == 1
    assert not manager.is_connected("slow")


async def test_outbox_frames_are_delivered_in_order_once_the_socket_drains(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(max_queue_size=100, **QUIET))
    sock = FakeSocket()
    sock.gate.clear()
    await manager.connect("alice", sock)
    for i in range(20):
        assert await manager.send_to_client("alice", str(i))
    sock.gate.set()
    assert [await sock.next() for _ in range(20)] == [str(i) for i in range(20)]


async def test_broadcast_raises_when_every_recipient_failed(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    await manager.connect("a", FakeSocket(fail_sends=True))
    with pytest.raises(BroadcastFailedError) as info:
        await manager.broadcast("x")
    assert info.value.result is not None
    assert (info.value.result.total, info.value.result.failed) == (1, 1)
    empty = await manager.broadcast("nobody is here")
    assert (empty.total, empty.succeeded, empty.failed) == (0, 0, 0)


async def test_tokens_are_single_use_and_allow_dots_in_client_ids(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    token = manager.generate_reconnect_token("first.last@example.com")
    assert await manager.validate_reconnect_token(token) == "first.last@example.com"
    with pytest.raises(InvalidTokenError):
        await manager.validate_reconnect_token(token)


@pytest.mark.parametrize("garbage", ["", "abc", "s1.x.y.z", "a.b.c.d.e", "s1..." , "\x00" * 10])
async def test_malformed_tokens_are_invalid(make_manager: ManagerFactory, garbage: str) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    with pytest.raises(InvalidTokenError):
        await manager.validate_reconnect_token(garbage)


async def test_tampered_token_is_invalid(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    token = manager.generate_reconnect_token("alice")
    head, kid, payload, sig = token.split(".")
    flipped = "A" if payload[-2] != "A" else "B"
    forged = ".".join([head, kid, payload[:-2] + flipped + payload[-1], sig])
    with pytest.raises(InvalidTokenError):
        await manager.validate_reconnect_token(forged)


async def test_expired_token_raises_token_expired(make_manager: ManagerFactory) -> None:
    secret = "s" * 32
    manager = make_manager(WebSocketConfig(token_secret=secret, **QUIET))
    old = TokenCodec([secret.encode()], "stabilizer").sign(
        "alice", now=time.time() - 7200, ttl=3600
    )
    with pytest.raises(TokenExpiredError):
        await manager.validate_reconnect_token(old)


async def test_a_configured_secret_makes_tokens_survive_a_restart(
    make_manager: ManagerFactory,
) -> None:
    config = WebSocketConfig(token_secret="k" * 32, **QUIET)
    before = make_manager(config)
    token = before.generate_reconnect_token("alice")
    await before.graceful_shutdown(timeout=1)
    after = make_manager(config)  # a new process would build exactly this
    assert await after.validate_reconnect_token(token) == "alice"


async def test_token_from_another_namespace_is_invalid(make_manager: ManagerFactory) -> None:
    one = make_manager(WebSocketConfig(token_secret="k" * 32, namespace="one", **QUIET))
    two = make_manager(WebSocketConfig(token_secret="k" * 32, namespace="two", **QUIET))
    with pytest.raises(InvalidTokenError):
        await two.validate_reconnect_token(one.generate_reconnect_token("alice"))


async def test_tokens_can_be_disabled(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(enable_reconnect=False, **QUIET))
    with pytest.raises(WebSocketStabilizerError):
        manager.generate_reconnect_token("alice")
    with pytest.raises(InvalidTokenError):
        await manager.validate_reconnect_token("s1.a.b.c")


async def test_token_rotation_keeps_old_tokens_valid(make_manager: ManagerFactory) -> None:
    old_key, new_key = "old-key-" + "x" * 16, "new-key-" + "y" * 16
    before = make_manager(WebSocketConfig(token_secret=old_key, **QUIET))
    token = before.generate_reconnect_token("alice")
    rotated = make_manager(WebSocketConfig(token_secret=(new_key, old_key), **QUIET))
    assert await rotated.validate_reconnect_token(token) == "alice"
    only_new = make_manager(WebSocketConfig(token_secret=new_key, **QUIET))
    with pytest.raises(InvalidTokenError):
        await only_new.validate_reconnect_token(before.generate_reconnect_token("bob"))


async def test_token_ttl_is_honoured(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(reconnect_token_ttl=timedelta(seconds=30),
                                           token_secret="k" * 32, **QUIET))
    token = manager.generate_reconnect_token("alice")
    claims = TokenCodec([b"k" * 32], "stabilizer").verify(token, now=time.time())
    assert claims.expires_at - claims.issued_at == pytest.approx(30, abs=0.01)


async def test_user_data_round_trip_and_memory_limit(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(max_memory_per_connection=4096, **QUIET))
    await manager.connect("alice", FakeSocket())
    await manager.set_user_data("alice", "name", "Alice")
    assert await manager.get_user_data("alice", "name") == "Alice"
    assert await manager.get_user_data("alice", "missing") is None
    assert await manager.get_user_data("nobody", "name") is None
    with pytest.raises(MemoryLimitExceededError):
        await manager.set_user_data("alice", "blob", "x" * 10_000)
    assert await manager.get_user_data("alice", "blob") is None
    assert await manager.get_user_data("alice", "name") == "Alice"
    with pytest.raises(ConnectionNotFoundError):
        await manager.set_user_data("nobody", "k", "v")


async def test_metadata_over_the_per_connection_limit_is_refused(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(max_memory_per_connection=2048, **QUIET))
    with pytest.raises(MemoryLimitExceededError):
        await manager.connect("alice", FakeSocket(), metadata={"big": "x" * 5000})
    assert manager.get_connection_count() == 0


@pytest.mark.parametrize(
    ("policy", "evicted"), [("lru", "b"), ("fifo", "a"), ("oldest", "a")]
)
async def test_total_memory_limit_evicts_by_policy(
    make_manager: ManagerFactory, policy: str, evicted: str
) -> None:
    probe = make_manager(WebSocketConfig(**QUIET))  # what one such connection takes
    await probe.connect("a", FakeSocket("a"))
    per_conn = probe.get_memory_usage()["per_connection_average"]
    manager = make_manager(WebSocketConfig(memory_eviction_policy=policy,
                                           max_total_memory=int(per_conn * 3.5), **QUIET))
    sockets = {cid: FakeSocket(cid) for cid in ("a", "b", "c")}
    for cid in ("a", "b", "c"):
        await manager.connect(cid, sockets[cid])
    await manager.send_to_client("a", "activity")  # a is now the most recently used

    await manager.connect("d", FakeSocket("d"))

    assert (await sockets[evicted].wait_closed())[0] == CloseCode.MEMORY_EVICTED
    assert not manager.is_connected(evicted)
    assert manager.get_connection_count() == 3
    assert manager.stats.memory_evictions == 1


async def test_memory_usage_reports_the_seed_fields(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    assert manager.get_memory_usage()["connection_count"] == 0
    await manager.connect("a", FakeSocket())
    await manager.set_user_data("a", "blob", "x" * 1000)
    usage = manager.get_memory_usage()
    assert usage["connection_count"] == 1
    assert usage["total_memory"] >= 1000
    assert usage["per_connection_average"] == usage["total_memory"]


async def test_ping_measures_a_round_trip_or_times_out(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sock = FakeSocket()
    await manager.connect("alice", sock)

    async def answer() -> None:
        frame = await sock.next_json(skip_pings=False)
        assert frame["type"] == "ping"
        await manager.handle_pong("alice")

    answering = asyncio.create_task(answer())
    rtt = await manager.ping("alice", timeout=2.0)
    await answering
    assert rtt >= 0
    with pytest.raises(ConnectionTimeoutError):
        await manager.ping("alice", timeout=0.05)
    with pytest.raises(ConnectionNotFoundError):
        await manager.ping("nobody")


async def test_pings_that_timed_out_or_were_cancelled_leave_nothing_behind(
        make_manager: ManagerFactory) -> None:
    # A client that reads but never sends: every ping() ends unanswered. Its waiters went
    # nowhere but stayed on the connection until the client's next frame.
    manager = make_manager(WebSocketConfig(**QUIET))
    sock = FakeSocket()
    await manager.connect("silent", sock)
    conn = manager.get_connection("silent")
    assert conn is not None
    for _ in range(20):
        with pytest.raises(ConnectionTimeoutError):
            await manager.ping("silent", timeout=0)
    for _ in range(20):
        assert (await sock.next_json(skip_pings=False))["type"] == "ping"
    cancelled = asyncio.create_task(manager.ping("silent", timeout=60))
    assert (await sock.next_json(skip_pings=False))["type"] == "ping"  # (after its waiter)
    assert len(conn._pong_waiters or ()) == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not conn._pong_waiters


class AnsweringSocket(FakeSocket):
    """A client that answers each ping while the ping is being written to it: its answer
    never races the heartbeat clock, however late the event loop runs."""

    def __init__(self, manager: WebSocketConnectionManager, client_id: str) -> None:
        super().__init__(client_id)
        self.manager = manager

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await super().send(message)
        if '"type":"ping"' in str(message.get("text")):
            await self.manager.handle_pong(self.name)


async def test_heartbeat_closes_a_silent_client_and_keeps_an_answering_one(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(heartbeat_interval=0.05, heartbeat_timeout=0.15))
    silent, chatty = FakeSocket("silent"), AnsweringSocket(manager, "chatty")
    await manager.connect("silent", silent)
    await manager.connect("chatty", chatty)

    code, _ = await silent.wait_closed(timeout=10.0)  # a bound, however loaded the machine

    assert code == CloseCode.HEARTBEAT_TIMEOUT
    assert len(chatty.sent) >= 1  # it was pinged too, and answered
    assert manager.is_connected("chatty")
    assert chatty.closed is None
    assert manager.stats.heartbeat_timeouts == 1


async def test_heartbeat_timeout_longer_than_the_interval_is_honoured(
    make_manager: ManagerFactory,
) -> None:
    """The seed closed a silent client at the second interval whatever heartbeat_timeout said.

    With a timeout of an hour, a silent client keeps being pinged at each interval and is
    still open after its third ping: no stalled event loop can make the hour pass, so the
    check holds on any machine. (tests/unit/test_heartbeat_schedule.py fixes the exact
    close time on an explicit clock.)
    """
    manager = make_manager(WebSocketConfig(heartbeat_interval=0.05, heartbeat_timeout=3600.0))
    sock = FakeSocket("alice")
    await manager.connect("alice", sock)
    for _ in range(3):
        frame = await sock.next_json(timeout=10.0, skip_pings=False)
        assert frame["type"] == "ping"
    assert sock.closed is None
    assert manager.is_connected("alice")


async def test_custom_heartbeat_sends_no_pings_but_still_expires_silent_clients(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(
        WebSocketConfig(heartbeat_type="custom", heartbeat_interval=0.05, heartbeat_timeout=0.2)
    )
    sock = FakeSocket()
    await manager.connect("alice", sock)
    code, _ = await sock.wait_closed(timeout=5.0)
    assert code == CloseCode.HEARTBEAT_TIMEOUT
    assert sock.sent == []


async def test_shutdown_refuses_new_connections_and_reports(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sockets = [FakeSocket(str(i)) for i in range(3)]
    for i, sock in enumerate(sockets):
        await manager.connect(str(i), sock)

    report = await manager.graceful_shutdown(timeout=5.0)

    assert (report.closed_count, report.failed_count) == (3, 0)
    assert report.close_code == CloseCode.GOING_AWAY
    assert [(await s.wait_closed())[0] for s in sockets] == [1001, 1001, 1001]
    with pytest.raises(ShutdownError):
        await manager.connect("late", FakeSocket())
    again = await manager.graceful_shutdown()
    assert (again.closed_count, again.failed_count) == (0, 0)


async def test_shutdown_in_restart_mode_closes_with_1012(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(shutdown_mode="restart", **QUIET))
    sock = FakeSocket()
    await manager.connect("a", sock)
    report = await manager.graceful_shutdown(timeout=5.0)
    assert report.close_code == CloseCode.SERVICE_RESTART
    assert (await sock.wait_closed())[0] == 1012


async def test_shutdown_drains_outboxes_before_closing(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    sock = FakeSocket()
    sock.gate.clear()
    await manager.connect("a", sock)
    for i in range(5):
        await manager.send_to_client("a", str(i))

    async def release_later() -> None:
        await sock.send_started.wait()
        sock.gate.set()

    releasing = asyncio.create_task(release_later())
    report = await manager.graceful_shutdown(timeout=5.0)
    await releasing
    assert sock.sent == ["0", "1", "2", "3", "4"]
    assert report.drained_frames == 5
    assert report.dropped_frames == 0
    assert sock.closed is not None


async def test_shutdown_deadline_aborts_a_socket_that_never_drains(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(close_timeout=0.1, **QUIET))
    stuck = FakeSocket("stuck")
    stuck.gate.clear()

    async def never_closes(code: int = 1000, reason: str | None = None) -> None:
        await asyncio.Event().wait()

    stuck.close = never_closes  # type: ignore[method-assign]
    await manager.connect("stuck", stuck)
    await manager.send_to_client("stuck", "queued")
    report = await manager.graceful_shutdown(timeout=0.3)
    assert (report.closed_count, report.failed_count) == (0, 1)
    assert report.dropped_frames == 1


async def test_connect_starts_the_manager_when_the_app_did_not(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    assert manager.phase.value == "new"
    await manager.connect("a", FakeSocket())
    assert manager.phase.value == "running"
