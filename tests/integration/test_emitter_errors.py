"""What the emitter's exceptions tell a caller: whether a failed send may have gone out
(BackendUnavailable, outcome unknown) or certainly did not (BackendNotReached), and that a
presence query on a namespace without presence is refused as the replicas refuse it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import (
    BackendUnavailable,
    ChannelOptions,
    Emitter,
    PresenceDisabledError,
    SyncEmitter,
    WebSocketConfig,
)
from stabilizer.errors import BackendNotReached
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import MODES, QUIET, data
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


# Keeps Redis busy for ARGV[1] ms: it reads nothing else meanwhile, then serves what came.
BUSY = """local t = redis.call('TIME')
local stop = t[1] * 1000000 + t[2] + ARGV[1] * 1000
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop"""


def command(*parts: str) -> bytes:
    """One command in RESP."""
    encoded = [part.encode() for part in parts]
    return b"".join([f"*{len(encoded)}\r\n".encode(),
                     *(b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)])


@pytest.mark.parametrize("settings", MODES)
async def test_a_send_redis_took_but_did_not_answer_says_its_outcome_is_unknown(
        make_manager: ManagerFactory, private_redis: RedisServer, namespace: str,
        settings: dict[str, Any]) -> None:
    config = WebSocketConfig(redis_url=private_redis.url, namespace=namespace, **settings)
    node = make_manager(config.replace(node_id="node-a", **QUIET))
    await node.start()
    bob = FakeSocket("bob")
    await node.connect("bob", bob)
    async with Emitter(config=config.replace(op_timeout=0.3)) as emitter:
        assert await emitter.get_nodes() == ["node-a"]  # connected
        reader, writer = await asyncio.open_connection("127.0.0.1", private_redis.port)
        try:
            writer.write(command("PING"))  # Redis serves this connection already (so it
            assert await reader.readline() == b"+PONG\r\n"  # reads the script first)
            # written before the send: Redis runs the script first, then the send
            writer.write(command("EVAL", BUSY, "0", "2000"))
            await writer.drain()
            with pytest.raises(BackendUnavailable, match="outcome unknown") as raised:
                await emitter.send_to_client("bob", "once")
            async with asyncio.timeout(10):
                assert await reader.readline() == b"$-1\r\n"  # the script is done
        finally:
            writer.close()
            await writer.wait_closed()
        assert not isinstance(raised.value, BackendNotReached)
        assert await data(bob, bool(settings)) == "once"  # it did go out
        await emitter.send_to_client("bob", "next")
        assert await data(bob, bool(settings)) == "next"  # and only once


@pytest.mark.parametrize("settings", MODES)
async def test_a_send_that_reached_no_redis_raises_backend_not_reached(
        private_redis: RedisServer, namespace: str, settings: dict[str, Any]) -> None:
    url = private_redis.url
    private_redis.stop(kill=True)
    async with Emitter(url, namespace=namespace, op_timeout=0.5, **settings) as emitter:
        sends: list[Callable[[], Awaitable[object]]] = [
            lambda: emitter.broadcast("x"), lambda: emitter.send_to_client("bob", "x"),
            lambda: emitter.send_to_group("room", "x"),
            lambda: emitter.send_to_user("ann", "x"), lambda: emitter.disconnect_user("ann")]
        for send in sends:
            with pytest.raises(BackendNotReached, match="nothing was sent"):
                await send()


async def test_presence_queries_refuse_a_namespace_without_presence(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, channel_namespaces={
        "quiet:": ChannelOptions(presence=False)})
    node = make_manager(config.replace(**QUIET))
    await node.start()
    async with Emitter(config=config) as emitter:
        for ask in (node.get_presence, node.count_presence,
                    emitter.get_presence, emitter.count_presence):
            with pytest.raises(PresenceDisabledError, match="quiet:x"):
                await ask("quiet:x")
        assert await emitter.get_presence("room") == {}  # other namespaces answer
        assert await emitter.count_presence("room") == 0

    def blocking() -> None:
        with SyncEmitter(config=config) as sync, pytest.raises(PresenceDisabledError):
            sync.count_presence("quiet:x")

    await asyncio.to_thread(blocking)


async def test_a_sync_send_past_the_backstop_says_its_outcome_is_unknown(
        make_manager: ManagerFactory, private_redis: RedisServer, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The SyncEmitter bounds each call around its emitter too (a backstop, for a loop that
    falls behind); here it is made shorter than the emitter's own bound, and fires while
    Redis holds a send it then runs: the error says the outcome is unknown, as the
    Emitter's does, and is no BackendNotReached. A read past it says no such thing."""
    config = WebSocketConfig(redis_url=private_redis.url, namespace=namespace)
    node = make_manager(config.replace(node_id="node-a", **QUIET))
    await node.start()
    bob = FakeSocket("bob")
    await node.connect("bob", bob)
    with SyncEmitter(config=config.replace(op_timeout=30.0)) as sync:
        assert await asyncio.to_thread(sync.get_nodes) == ["node-a"]  # connected
        sends: list[tuple[Callable[[], object], bool]] = [
            (lambda: sync.send_to_client("bob", "once"), True), (sync.get_nodes, False)]
        for call, writes in sends:
            backstop = monkeypatch.context()
            with backstop as patched:
                patched.setattr("stabilizer.emitter.sync._OP_TIMEOUTS", 0)
                patched.setattr("stabilizer.emitter.sync._SLACK", 0.2)
                with pytest.raises(BackendUnavailable) as raised:
                    await asyncio.to_thread(busy_while, private_redis.port, call)
            assert not isinstance(raised.value, BackendNotReached)
            assert ("outcome unknown" in str(raised.value)) is writes, raised.value
        assert await data(bob, False) == "once"  # it did go out
        await asyncio.to_thread(sync.send_to_client, "bob", "next")
        assert await data(bob, False) == "next"  # and only once


def busy_while(port: int, call: Callable[[], object]) -> object:
    """Keep Redis busy for two seconds while `call` runs (in this thread); return once
    Redis is done with it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as busy:
        busy.sendall(command("PING"))  # Redis serves this connection already (so it reads
        assert busy.recv(16) == b"+PONG\r\n"  # the script before what `call` sends)
        busy.sendall(command("EVAL", BUSY, "0", "2000"))
        try:
            return call()
        finally:
            assert busy.recv(16) == b"$-1\r\n"  # the script is done
