"""The checker's cluster harness itself: a replica it restarts finds another port when the
machine took its own meanwhile (a bind race, not a library defect: RELIABILITY.md, seed
58099531), and the clients follow it there; two restarts of Redis at once (a schedule's
``Together``, seed 1275218636) run one after the other."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tests.faults.cluster import Cluster
from tests.support.redis_server import RedisServer, _answers_ping

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_a_replica_whose_port_was_taken_while_it_was_down_starts_on_another() -> None:
    cluster = Cluster(history=False, namespace=f"harness{os.getpid()}")
    ports = cluster.ports  # the list the clients read
    try:
        await cluster.start()
        old = ports[1]
        assert await cluster.fault("kill", 1, heal=False) == "replica 1 killed"
        squatter = socket.socket()
        try:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", old))
            squatter.listen()
            done = await cluster.fault("kill", 1, heal=True)
        finally:
            squatter.close()
        assert done.startswith("replica 1 started again on port "), done
        assert cluster.ports is ports
        assert ports[1] != old
        status, body = await cluster.request(1, "GET", "/faults/local")
        assert status == 200, body
        assert not [text for label, text in cluster.log_texts() if "in use" in text.lower()]
    finally:
        await cluster.stop()


@pytest.mark.timeout(60)
async def test_two_restarts_of_redis_at_once_both_complete() -> None:
    with RedisServer() as server:
        await asyncio.gather(*(asyncio.to_thread(server.restart) for _ in range(2)))
        assert server.process is not None
        assert server.process.poll() is None
        assert _answers_ping(server.port)
