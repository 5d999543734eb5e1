"""The rolling-restart guarantee: every client receives every message exactly once, in order,
while all three replicas are restarted one after another under steady traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import pytest

from stabilizer.client import ClientConnection, RetryPolicy, connect
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

CLIENTS = 6
SETTINGS = {
    "STABILIZER_HISTORY_SIZE": "2000",
    "STABILIZER_SESSION_TTL": "60",
    "STABILIZER_SHUTDOWN_MODE": "restart",
    "STABILIZER_RETRY_JITTER": "0.5",
    "STABILIZER_HEARTBEAT_INTERVAL": "3600",
    "STABILIZER_HEARTBEAT_TIMEOUT": "3600",
    "STABILIZER_NODE_TTL": "2",
}


def replica_env(redis_url: str, index: int) -> dict[str, str]:
    return {**SETTINGS, "STABILIZER_REDIS_URL": redis_url,
            "STABILIZER_NAMESPACE": f"rolling-{os.getpid()}",
            "STABILIZER_NODE_ID": f"replica-{index}"}


async def test_rolling_restart_loses_and_duplicates_nothing(redis_server: RedisServer) -> None:
    replicas = [UvicornProcess(env=replica_env(redis_server.url, i)).start() for i in range(3)]
    proxy = Nginx([r.port for r in replicas]).start()
    received: dict[str, list[int]] = {f"user{i}": [] for i in range(CLIENTS)}
    not_recovered: list[str] = []
    clients: list[ClientConnection] = []
    sent = 0
    stop = asyncio.Event()

    async def consume(name: str, conn: ClientConnection) -> None:
        async for message in conn:
            received[name].append(json.loads(message)["n"])

    async def publish(via: list[int]) -> None:
        nonlocal sent
        while not stop.is_set():
            target = replicas[via[0]]
            await asyncio.to_thread(target.post, "/admin/broadcast", {"message": {"n": sent}})
            sent += 1
            await asyncio.sleep(0.01)

    try:
        for name in received:
            conn = connect(f"{proxy.ws}/ws/{name}", retry=RetryPolicy(base=0.05, cap=1.0),
                           on_resume=lambda result, name=name: result.recovered or
                           not_recovered.append(name))
            await conn.start()
            clients.append(conn)
        consumers = [asyncio.create_task(consume(name, conn))
                     for name, conn in zip(received, clients, strict=True)]
        via = [0]
        publisher = asyncio.create_task(publish(via))
        for index in range(3):
            via[0] = (index + 1) % 3  # publish through a replica that stays up
            before = sent
            async with asyncio.timeout(30):
                while sent < before + 20:  # steady traffic before each restart
                    await asyncio.sleep(0.01)
            old = replicas[index]
            await asyncio.to_thread(old.stop)  # SIGTERM: drain, 1012 + retry advice
            replicas[index] = UvicornProcess(env=old.env, port=old.port).start()
        before = sent
        async with asyncio.timeout(30):
            while sent < before + 20:
                await asyncio.sleep(0.01)
        stop.set()
        await publisher
        async with asyncio.timeout(60):
            while any(len(got) < sent for got in received.values()):
                await asyncio.sleep(0.05)
        for conn in clients:
            await conn.aclose()
        await asyncio.gather(*consumers)
    finally:
        stop.set()
        for conn in clients:
            with contextlib.suppress(Exception):
                await conn.aclose()
        proxy.stop()
        for replica in replicas:
            replica.stop()

    expected = list(range(sent))
    for name, got in received.items():
        assert got == expected, f"{name}: {len(got)} of {sent} messages, in order: " \
                                f"{got == sorted(got)}, duplicates: {len(got) - len(set(got))}"
    assert not_recovered == []
    assert sent >= 80
