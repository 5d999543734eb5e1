"""The fault proxy against a real Redis: each fault does what it says, one proxy's fault
leaves the others alone, and restore() undoes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
async def proxies(redis_server: RedisServer) -> AsyncIterator[tuple[FaultProxy, FaultProxy]]:
    async with FaultProxy(redis_server.port) as first, FaultProxy(redis_server.port) as second:
        yield first, second


def reset(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()
    writer.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              timeout: float = 3.0) -> bytes:
    """PING on an open connection; return the reply (ConnectionResetError when closed)."""
    writer.write(PING)
    async with asyncio.timeout(timeout):
        reply = await reader.readline()
    if not reply:
        raise ConnectionResetError("the proxy closed the connection")
    return reply


async def ping(proxy: FaultProxy, timeout: float = 3.0) -> bytes:
    """PING through the proxy on a new connection; return the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        return await ask(reader, writer, timeout)
    finally:
        reset(writer)


async def test_a_cut_resets_one_replicas_connections_and_refuses_new_ones_until_restored(
    proxies: tuple[FaultProxy, FaultProxy],
) -> None:
    cut, other = proxies
    reader, writer = await asyncio.open_connection("127.0.0.1", cut.port)
    try:
        assert await ask(reader, writer) == b"+PONG\r\n"
        await cut.cut()
        with pytest.raises(ConnectionError):
            await ask(reader, writer)
    finally:
        reset(writer)
    with pytest.raises(ConnectionError):
        await ping(cut)
    assert await ping(other) == b"+PONG\r\n"
    cut.restore()
    assert await ping(cut) == b"+PONG\r\n"


async def test_a_stall_holds_bytes_without_closing_and_delivers_them_once_restored(
    proxies: tuple[FaultProxy, FaultProxy],
) -> None:
    stalled, other = proxies
    reader, writer = await asyncio.open_connection("127.0.0.1", stalled.port)
    try:
        stalled.stall()
        writer.write(PING)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readline()
        assert not writer.transport.is_closing()
        assert await ping(other) == b"+PONG\r\n"
        stalled.restore()
        async with asyncio.timeout(3.0):
            assert await reader.readline() == b"+PONG\r\n"  # held, not dropped
    finally:
        reset(writer)


async def test_latency_delays_replies_without_losing_them(
    proxies: tuple[FaultProxy, FaultProxy],
) -> None:
    slow, _ = proxies
    slow.set_latency(30.0)
    with pytest.raises(TimeoutError):
        await ping(slow, timeout=0.3)
    slow.set_latency(0.05)
    assert await ping(slow) == b"+PONG\r\n"


async def test_dropping_subscriptions_resets_only_pubsub_connections(
    proxies: tuple[FaultProxy, FaultProxy], redis_server: RedisServer,
) -> None:
    proxy, _ = proxies
    sub_reader, sub_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    cmd_reader, cmd_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        sub_writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        async with asyncio.timeout(3.0):
            await sub_reader.readuntil(b":1\r\n")  # the subscribe confirmation
        await proxy.drop_subscriptions()
        async with asyncio.timeout(3.0):
            assert await sub_reader.read() == b""  # reset
        cmd_writer.write(PING)
        assert await cmd_reader.readline() == b"+PONG\r\n"  # commands carry on
        again_reader, again_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        again_writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        async with asyncio.timeout(3.0):
            assert await again_reader.read() == b""  # a new subscription is refused
        reset(again_writer)
        proxy.restore()
        again_reader, again_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        again_writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        async with asyncio.timeout(3.0):
            await again_reader.readuntil(b":1\r\n")
        reset(again_writer)
    finally:
        reset(sub_writer)
        reset(cmd_writer)


async def test_held_subscriptions_wait_and_go_through_once_restored(
    proxies: tuple[FaultProxy, FaultProxy],
) -> None:
    proxy, _ = proxies
    await proxy.drop_subscriptions(hold=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readuntil(b":1\r\n")
        assert not writer.transport.is_closing()
        assert await ping(proxy) == b"+PONG\r\n"  # commands carry on meanwhile
        proxy.restore()
        async with asyncio.timeout(3.0):
            await reader.readuntil(b":1\r\n")
    finally:
        reset(writer)
