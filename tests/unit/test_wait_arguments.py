"""Every public call taking a `timeout` refuses one the event loop cannot keep (NaN, infinity,
a negative number, a non-number) with ConfigError, before it does anything.

Found by review: ``send_to_client(..., ack=True, timeout=nan)`` handed NaN to
``asyncio.timeout``; a NaN deadline in the loop's timer heap breaks its order, and every
timer of the replica (heartbeats, connect and close timeouts, other sends' timeouts) fired
late, some by a minute. ``timeout=inf`` held the send, and its bookkeeping, for ever."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import AckTimeoutError, ConfigError, WebSocketConnectionManager
from stabilizer.client import connect
from stabilizer.client.presence import ChannelPresence
from stabilizer.config_limits import MAX_SECONDS
from stabilizer.fastapi import lifespan
from stabilizer.node.context import Phase
from stabilizer.pure.waits import wait_seconds
from tests.unit.test_acks import as_v2

BAD: list[Any] = [math.nan, math.inf, -math.inf, -1, -0.001, MAX_SECONDS * 2, 10**400, True,
                  False, "5", None, [1]]


def test_a_wait_is_a_finite_number_of_seconds_from_zero() -> None:
    assert wait_seconds("timeout", 0) == 0.0
    assert wait_seconds("timeout", 2) == 2.0
    assert wait_seconds("timeout", 0.25) == 0.25
    assert wait_seconds("timeout", MAX_SECONDS) == MAX_SECONDS
    for bad in BAD:
        with pytest.raises(ConfigError, match=r"^timeout must be"):
            wait_seconds("timeout", bad)
    assert issubclass(ConfigError, ValueError)


async def test_a_nan_ack_timeout_is_refused_before_anything_is_sent() -> None:
    async with WebSocketConnectionManager() as manager:
        sock, _ = await as_v2(manager, "v2")
        asking = asyncio.create_task(
            manager.send_to_client("v2", "hi", ack=True, timeout=math.nan))
        arrived = asyncio.create_task(sock.frames.get())
        # no timer here: with NaN in the heap, a timer is what cannot be trusted
        await asyncio.wait([asking, arrived], return_when=asyncio.FIRST_COMPLETED)
        arrived.cancel()
        assert asking.done(), "the message went out and the send waits on a NaN deadline"
        with pytest.raises(ConfigError, match="timeout must be a finite number"):
            asking.result()
        assert sock.sent == []


Call = Callable[[WebSocketConnectionManager, Any], Awaitable[object]]
CALLS: dict[str, Call] = {
    "send_to_client ack": lambda m, t: m.send_to_client("v2", "x", ack=True, timeout=t),
    "send_to_client": lambda m, t: m.send_to_client("v2", "x", timeout=t),
    "send_to_user ack": lambda m, t: m.send_to_user("ann", "x", ack=True, timeout=t),
    "send_to_user": lambda m, t: m.send_to_user("ann", "x", timeout=t),
    "ping": lambda m, t: m.ping("v2", timeout=t),
    "graceful_shutdown": lambda m, t: m.graceful_shutdown(timeout=t),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_every_call_taking_a_timeout_refuses_one_the_loop_cannot_keep(call: str) -> None:
    async with WebSocketConnectionManager() as manager:
        sock, _ = await as_v2(manager, "v2")
        for bad in BAD:
            if bad is None and call == "ping":
                continue  # (the heartbeat timeout: below)
            with pytest.raises(ConfigError, match="timeout must be"):
                await CALLS[call](manager, bad)
        assert manager.phase is Phase.RUNNING  # a refused shutdown did not begin
        assert sock.sent == []  # nothing was sent either


async def test_a_zero_timeout_does_not_wait() -> None:
    async with WebSocketConnectionManager() as manager:
        sock, _ = await as_v2(manager, "v2")
        with pytest.raises(AckTimeoutError, match="within 0s"):
            await manager.send_to_client("v2", "x", ack=True, timeout=0)
        assert (await sock.next_json())["data"] == "x"  # sent, not awaited
        await manager.graceful_shutdown(timeout=0)
        assert manager.phase is Phase.STOPPED


def test_the_lifespan_refuses_a_shutdown_timeout_the_loop_cannot_keep() -> None:
    manager = WebSocketConnectionManager()
    for bad in BAD:
        with pytest.raises(ConfigError, match="shutdown_timeout must be"):
            lifespan(manager, shutdown_timeout=bad)


async def test_a_ping_without_a_timeout_uses_the_heartbeat_timeout() -> None:
    async with WebSocketConnectionManager() as manager:
        _, conn = await as_v2(manager, "v2")
        pinging = asyncio.create_task(manager.ping("v2"))
        await asyncio.sleep(0)
        conn.heard(asyncio.get_running_loop().time())
        assert await pinging >= 0.0


async def test_the_python_client_refuses_a_timeout_its_loop_cannot_keep() -> None:
    for name in ("send_timeout", "open_timeout", "close_timeout"):
        with pytest.raises(ConfigError, match=rf"^{name} must be"):
            connect("ws://127.0.0.1:9/ws", protocol=2, **{name: math.nan})
    conn = connect("ws://127.0.0.1:9/ws", protocol=2)  # (not started: refused before that)
    calls: list[Callable[[Any], Awaitable[object]]] = [
        lambda t: conn.send("x", timeout=t), lambda t: conn.rpc("m", timeout=t),
        lambda t: conn.subscribe("c", timeout=t), lambda t: conn.unsubscribe("c", timeout=t),
        lambda t: conn.publish("c", "x", timeout=t),
        lambda t: ChannelPresence("c").until(lambda _: True, timeout=t)]
    for call in calls:
        for bad in BAD:
            if bad is None and call is calls[0]:
                continue  # send's None: send_timeout
            with pytest.raises(ConfigError, match=r"^timeout must be"):
                await call(bad)
