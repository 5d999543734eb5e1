"""A rolling restart behind the shipped nginx settings, with a boot gap: each replica is down
for a while (its port refuses connections) before the new instance listens. Every client must
be back on a replica soon after the last restart, not held off by the proxy.

With nginx's defaults (max_fails=1 fail_timeout=10s) a refused connect marks the replica
failed; after fail_timeout one request probes it, and the mark clears only when that request
ends, which a WebSocket does not do while it lives. Once every replica has been restarted all
are marked, and nginx answers 502 'no live upstreams' to almost every reconnect for minutes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from stabilizer.client import ClientConnection, RetryPolicy, connect
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

CLIENTS = 15  # several per replica: more reconnects than one probe per replica lets through
RETRY = RetryPolicy(base=0.05, cap=1.0)
# each client is back within retry_jitter (the server's retry advice) plus a few capped
# retries; this bound only guards against a hang, it is far above that
BACK_WITHIN = 15.0
SETTINGS = {
    "STABILIZER_SESSION_TTL": "60",
    "STABILIZER_SHUTDOWN_MODE": "restart",
    "STABILIZER_RETRY_JITTER": "0.5",
    "STABILIZER_NODE_TTL": "2",
}


def refuses(port: int) -> bool:
    """True when nothing listens on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def refused_connects(proxy: Nginx, port: int) -> int:
    """How many connects to `port` nginx has logged as refused so far."""
    log = (proxy.dir / "error.log").read_text(errors="replace")
    return len(re.findall(rf"Connection refused\) while connecting to upstream.*"
                          rf"upstream: \"http://127\.0\.0\.1:{port}/", log))


def through_proxy(proxy: Nginx, path: str) -> int:
    """GET `path` through nginx; the status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


async def until(predicate: Callable[[], bool], bound: float, what: str) -> None:
    """Poll `predicate` (no event exists for what a proxy or a port does) under a bound."""
    try:
        async with asyncio.timeout(bound):
            while not await asyncio.to_thread(predicate):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {bound}s: {what}") from None


async def restart_with_boot_gap(proxy: Nginx, old: UvicornProcess) -> UvicornProcess:
    """Stop the replica, wait until nginx has seen its port refuse a connect, start it again."""
    before = refused_connects(proxy, old.port)
    await asyncio.to_thread(old.stop)  # SIGTERM: drain, 1012 + retry advice
    await until(lambda: refuses(old.port), 10, "the stopped replica's port refuses")
    # the boot gap: the clients' reconnects (and a health check, which round robin sends to
    # every replica in turn) reach the down port and are refused
    await until(lambda: through_proxy(proxy, "/health") > 0 and
                refused_connects(proxy, old.port) > before, 10,
                "nginx saw the down replica refuse a connect")
    return await asyncio.to_thread(UvicornProcess(env=old.env, port=old.port).start)


async def test_every_client_is_back_soon_after_a_rolling_restart_with_boot_gaps(
    redis_server: RedisServer,
) -> None:
    env = {**SETTINGS, "STABILIZER_REDIS_URL": redis_server.url,
           "STABILIZER_NAMESPACE": f"rolling-gap-{os.getpid()}"}
    replicas = [UvicornProcess(env={**env, "STABILIZER_NODE_ID": f"replica-{i}"}).start()
                for i in range(3)]
    proxy = Nginx([r.port for r in replicas]).start()
    clients: list[ClientConnection] = []

    def opened() -> int:
        return sum(conn.state.value == "open" for conn in clients)

    try:
        for i in range(CLIENTS):
            conn = connect(f"{proxy.ws}/ws/user{i}", retry=RETRY)
            await conn.start()
            clients.append(conn)
        for index in range(3):
            replicas[index] = await restart_with_boot_gap(proxy, replicas[index])
            try:
                await until(lambda: opened() == CLIENTS, BACK_WITHIN, "")
            except AssertionError:
                log = (proxy.dir / "error.log").read_text(errors="replace")
                raise AssertionError(
                    f"after restarting replica {index}: {opened()}/{CLIENTS} clients open "
                    f"{BACK_WITHIN}s later; nginx logged 'no live upstreams' x "
                    f"{log.count('no live upstreams')}") from None
    finally:
        for conn in clients:
            with contextlib.suppress(Exception):
                await conn.aclose()
        proxy.stop()
        for replica in replicas:
            replica.stop()
