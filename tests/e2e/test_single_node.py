"""One uvicorn process on the embedded backend, real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time

import pytest
from websockets.asyncio.client import connect

from stabilizer import CloseCode
from stabilizer.pure.tokens import TokenCodec
from tests.e2e.conftest import Launcher
from tests.support.clients import closed_with, open_client, recv_json

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
SECRET = "e2e-secret-" + "z" * 20


async def test_chat_broadcast_with_exclude_and_direct_send(launch: Launcher) -> None:
    server = launch(**QUIET)
    alice, hello_a = await open_client(f"{server.ws}/ws/alice")
    bob, _ = await open_client(f"{server.ws}/ws/bob")
    try:
        assert hello_a["client_id"] == "alice"
        assert hello_a["resumed"] is False
        await alice.send("hi all")
        assert await recv_json(bob) == {"from": "alice", "text": "hi all"}
        assert (await asyncio.to_thread(server.post, "/admin/send/alice",
                                        {"message": {"only": "alice"}}))["sent"] is True
        assert await recv_json(alice) == {"only": "alice"}
        await alice.send("echo:ping-me")
        assert await alice.recv() == "echo:ping-me"
        gone = await asyncio.to_thread(server.post, "/admin/send/nobody", {"message": "x"})
        assert gone["sent"] is False
    finally:
        await alice.close()
        await bob.close()


async def test_same_id_replaces_the_old_socket(launch: Launcher) -> None:
    server = launch(**QUIET)
    old, _ = await open_client(f"{server.ws}/ws/alice")
    new, _ = await open_client(f"{server.ws}/ws/alice")
    try:
        assert await closed_with(old) == CloseCode.REPLACED
        await asyncio.to_thread(server.post, "/admin/send/alice", {"message": "to the new one"})
        assert await new.recv() == "to the new one"
        stats = (await asyncio.to_thread(server.get, "/stats"))[1]
        assert stats["active_connections"] == 1
    finally:
        await new.close()


async def test_seed_pattern_reconnect_race_keeps_the_new_socket(launch: Launcher) -> None:
    """The seed README's handler, reconnecting with the same id: the new socket survives."""
    server = launch(**QUIET)
    old = await connect(f"{server.ws}/seed/alice")
    await asyncio.to_thread(server.post, "/admin/send/alice", {"message": "first"})
    assert await old.recv() == "first"
    new = await connect(f"{server.ws}/seed/alice")
    try:
        assert await closed_with(old) == CloseCode.REPLACED
        # the old handler has now run disconnect("alice"); the new socket must still work
        for _ in range(3):
            sent = await asyncio.to_thread(server.post, "/admin/send/alice", {"message": "x"})
            assert sent["sent"] is True
            assert await new.recv() == "x"
        assert "Exception in ASGI application" not in server.log()
    finally:
        await new.close()


async def test_heartbeat_evicts_a_client_that_never_answers(launch: Launcher) -> None:
    # pinged every 0.2 s; 3 s to answer, so a loaded machine never fails the polite client
    server = launch(heartbeat_interval=0.2, heartbeat_timeout=3.0)
    silent = await connect(f"{server.ws}/ws/silent")  # reads, never answers pings
    polite, _ = await open_client(f"{server.ws}/ws/polite")

    async def answer(ws: object) -> None:
        while True:
            frame = await recv_json(polite, skip_pings=False, timeout=30)
            if frame.get("type") == "ping":
                await polite.send("pong")

    answering = asyncio.create_task(answer(polite))
    try:
        assert await closed_with(silent) == CloseCode.HEARTBEAT_TIMEOUT
        stats = (await asyncio.to_thread(server.get, "/stats"))[1]
        assert stats["counters"]["heartbeat_timeouts"] == 1
        assert stats["active_connections"] == 1  # the polite client is still there
    finally:
        answering.cancel()
        await polite.close()


def stalled_reader(port: int, path: str) -> socket.socket:
    """A client that completes the handshake, shrinks its receive buffer, never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # read the 101 response only, byte by byte
        chunk = sock.recv(1)
        assert chunk, "server closed during the handshake"
        head += chunk
    assert b" 101 " in head.split(b"\r\n", 1)[0]
    return sock


async def test_a_stalled_reader_does_not_delay_others_and_is_closed(launch: Launcher) -> None:
    server = launch(max_queue_size=8, close_timeout=0.5, **QUIET)
    stalled = await asyncio.to_thread(stalled_reader, server.port, "/ws/stalled")
    reader, _ = await open_client(f"{server.ws}/ws/reader")
    payload = "x" * 32_768
    try:
        async with asyncio.timeout(30):  # 300 x 32 KB: far beyond every kernel buffer
            result = await asyncio.to_thread(
                server.post, "/admin/broadcast", {"message": payload, "repeat": 300}
            )
            for _ in range(300):
                assert await reader.recv() == payload
        assert result["total"] in (1, 2)
        async with asyncio.timeout(15):
            while True:  # the stalled client's removal is observable in /stats
                stats = (await asyncio.to_thread(server.get, "/stats"))[1]
                if stats["active_connections"] == 1:
                    break
                await asyncio.sleep(0.1)
        assert stats["counters"]["overflow_closes"] == 1
    finally:
        stalled.close()
        await reader.close()


async def test_an_oversized_frame_closes_with_1009(launch: Launcher) -> None:
    server = launch(max_message_size=1000, **QUIET)
    ws, _ = await open_client(f"{server.ws}/ws/big")
    await ws.send("y" * 1001)
    assert await closed_with(ws) == CloseCode.MESSAGE_TOO_BIG
    ok, _ = await open_client(f"{server.ws}/ws/fits")
    await ok.send("echo:" + "y" * 990)
    assert await ok.recv() == "echo:" + "y" * 990
    await ok.close()


async def test_tokens_resume_once_and_bad_tokens_are_refused(launch: Launcher) -> None:
    server = launch(token_secret=SECRET, **QUIET)
    first, hello = await open_client(f"{server.ws}/ws/alice")
    await first.close()
    token = hello["token"]
    resumed, again = await open_client(f"{server.ws}/ws/alice?token={token}")
    assert again["resumed"] is True
    await resumed.close()

    reused = await connect(f"{server.ws}/ws/alice?token={token}")
    assert await closed_with(reused) == CloseCode.INVALID_TOKEN
    other = (await asyncio.to_thread(server.post, "/admin/token/bob"))["token"]
    stolen = await connect(f"{server.ws}/ws/alice?token={other}")
    assert await closed_with(stolen) == CloseCode.INVALID_TOKEN
    fresh = (await asyncio.to_thread(server.post, "/admin/token/alice"))["token"]
    tampered = fresh[:-3] + ("AAA" if not fresh.endswith("AAA") else "BBB")
    forged = await connect(f"{server.ws}/ws/alice?token={tampered}")
    assert await closed_with(forged) == CloseCode.INVALID_TOKEN
    expired_token = TokenCodec([SECRET.encode()], "stabilizer").sign(
        "alice", now=time.time() - 7200, ttl=3600
    )
    expired = await connect(f"{server.ws}/ws/alice?token={expired_token}")
    assert await closed_with(expired) == CloseCode.TOKEN_EXPIRED


async def test_connection_limit_refuses_with_1013(launch: Launcher) -> None:
    server = launch(max_connections=2, **QUIET)
    a, _ = await open_client(f"{server.ws}/ws/a")
    b, _ = await open_client(f"{server.ws}/ws/b")
    refused = await connect(f"{server.ws}/ws/c")
    assert await closed_with(refused) == CloseCode.TRY_AGAIN_LATER
    await a.close()
    await b.close()


@pytest.mark.parametrize("bad_id", ["x" * 322])
async def test_an_unusable_client_id_is_refused(launch: Launcher, bad_id: str) -> None:
    server = launch(**QUIET)
    ws = await connect(f"{server.ws}/ws/{bad_id}")
    assert await closed_with(ws) == CloseCode.INVALID_CLIENT_ID


async def test_memory_limit_evicts_the_oldest_connection(launch: Launcher) -> None:
    # each idle connection is estimated at about 580 bytes: room for two, not three
    server = launch(max_total_memory=1500, memory_eviction_policy="oldest", **QUIET)
    first, _ = await open_client(f"{server.ws}/ws/first")
    second, _ = await open_client(f"{server.ws}/ws/second")
    third, _ = await open_client(f"{server.ws}/ws/third")  # over the limit: someone goes
    assert await closed_with(first) == CloseCode.MEMORY_EVICTED
    stats = (await asyncio.to_thread(server.get, "/stats"))[1]
    assert stats["counters"]["memory_evictions"] >= 1
    assert stats["memory"]["total_memory"] <= 1500
    await second.close()
    await third.close()


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)])
async def test_graceful_shutdown_closes_reports_and_refuses(
    launch: Launcher, restart: bool, code: int
) -> None:
    server = launch(**QUIET)
    clients = [(await open_client(f"{server.ws}/ws/c{i}"))[0] for i in range(3)]
    report = await asyncio.to_thread(
        server.post, f"/admin/shutdown?restart={'true' if restart else 'false'}"
    )
    assert report == {"closed": 3, "failed": 0, "close_code": code, "drained": 0,
                      "dropped": 0}
    assert [await closed_with(ws) for ws in clients] == [code] * 3
    late = await connect(f"{server.ws}/ws/late")
    assert await closed_with(late) == code
    status, health = await asyncio.to_thread(server.get, "/health")
    assert status == 503
    assert health["status"] == "stopped"


async def test_sigterm_drains_and_sends_retry_advice_before_uvicorn_exits(
    launch: Launcher,
) -> None:
    """uvicorn alone would close every socket with a bare 1012 before the lifespan ran."""
    server = launch(shutdown_mode="restart", retry_jitter=2, **QUIET)
    clients = [(await open_client(f"{server.ws}/ws/c{i}"))[0] for i in range(3)]
    stopping = asyncio.create_task(asyncio.to_thread(server.stop))
    reasons = []
    for ws in clients:
        code = await closed_with(ws)
        assert code == CloseCode.SERVICE_RESTART
        assert ws.close_reason is not None
        reasons.append(json.loads(ws.close_reason))
    assert all(0 < r["retry_ms"] <= 2250 for r in reasons)  # jittered advice, not bare
    # uvicorn then exits as it does on SIGTERM (it re-raises the signal it captured)
    assert await stopping in (0, -signal.SIGTERM)
    assert "signal 15: draining" in server.log()


async def test_a_token_spent_on_a_refused_connection_stays_valid(launch: Launcher) -> None:
    server = launch(max_connections=1, **QUIET)
    alice, hello = await open_client(f"{server.ws}/ws/alice")
    await alice.close()
    blocker, _ = await open_client(f"{server.ws}/ws/blocker")
    refused = await connect(f"{server.ws}/ws/alice?token={hello['token']}")
    assert await closed_with(refused) == CloseCode.TRY_AGAIN_LATER  # the node is full
    await blocker.close()
    async with asyncio.timeout(10):
        while (await asyncio.to_thread(server.get, "/stats"))[1]["active_connections"]:
            await asyncio.sleep(0.05)
    back, again = await open_client(f"{server.ws}/ws/alice?token={hello['token']}")
    assert again["resumed"] is True
    await back.close()
