"""v2 clients that close right after their connect frame, against a real uvicorn: each
connection's first frame, the `session` frame, finds its client gone.

Before, each such client left a closed connection in its node's pool for good (counted by
/health, listed as its user's connection, holding a slot of max_connections): as many such
clients as slots, and the node refused everyone with 1013."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect as raw_connect

from tests.e2e.conftest import V2Replicas
from tests.e2e.test_ack_gone import next_frame
from tests.integration.test_emitter import until
from tests.support.raw_ws import RawClient
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

BOUND = 10.0  # seconds: a bound on waits that end at once when all is well
CLOSE = 0x8


async def token(server: UvicornProcess, user: str) -> str:
    return str((await asyncio.to_thread(server.post, f"/admin/token/{user}"))["token"])


async def gone_at_once(server: UvicornProcess, device: str) -> None:
    """Alice's `device` sends its connect frame and its close in one write (the server
    reads the close before its application reads the connect frame), and leaves once the
    server closed too."""
    connect = json.dumps({"type": "connect", "token": await token(server, "alice"),
                          "device": device})
    client = await RawClient.connect(server.port, "/ws", subprotocol="stabilizer.v2")
    try:
        client.send_text_and_close(connect)
        async with asyncio.timeout(BOUND):
            while (await client.frame()).opcode != CLOSE:
                pass
    finally:
        await client.aclose()


async def connections(server: UvicornProcess) -> int:
    status, health = await asyncio.to_thread(server.get, "/health")
    assert status == 200
    return int(health["connections"])


async def test_clients_gone_at_once_leave_room_for_others(v2_replicas: V2Replicas) -> None:
    server, = v2_replicas(1, max_connections=2)
    for i in range(3):  # more than max_connections
        await gone_at_once(server, f"quick{i}")

    async def none_left() -> bool:  # (each handler ends on its own after its close)
        return await connections(server) == 0

    await until(none_left, timeout=BOUND)
    async with raw_connect(f"{server.ws}/ws",
                           subprotocols=["stabilizer.v2"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "token": await token(server, "bob"),
                                  "device": "honest"}))
        welcome = await next_frame(ws)
        assert welcome["type"] == "session"
        assert await connections(server) == 1
        users = await asyncio.to_thread(server.get, "/admin/users/alice")
        assert users == (200, [])
