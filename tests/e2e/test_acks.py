"""Acknowledged direct sends (docs/protocol.md 6.7): send_to_client(..., ack=True) on real
uvicorn replicas of tests/e2e/v2_app.py (several on one real Redis, with and without
history), acknowledged by the Python client once the application handled the message."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from stabilizer.client import ClientConnection
from tests.e2e.conftest import V2Replicas
from tests.e2e.v2_clients import user
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e


def send_acked(server: UvicornProcess, client_id: str, message: Any,
               timeout: float = 10.0, *, binary: bool = False) -> asyncio.Task[dict[str, Any]]:
    """POST the acknowledged send in the background; its answer comes once acknowledged."""
    return asyncio.create_task(asyncio.to_thread(
        server.post, f"/admin/send_acked/{client_id}?timeout={timeout}",
        {"message": message, "binary": binary}))


async def take(conn: ClientConnection) -> str | bytes:
    """A consumer of `conn` takes the next message and handles it: its task ends then."""
    return await asyncio.create_task(conn.recv())


async def handled(conn: ClientConnection) -> asyncio.Task[str | bytes]:
    """The application asks for the next message: the messages of consumers that are done
    with theirs are acknowledged (each task calling recv() is a consumer of its own)."""
    return asyncio.create_task(conn.recv())


@pytest.mark.parametrize(("replicas", "history"), [
    pytest.param(1, 0, id="one-node"),
    pytest.param(2, 0, id="two-replicas", marks=pytest.mark.redis),
    pytest.param(2, 100, id="two-replicas-history", marks=pytest.mark.redis)])
async def test_the_send_returns_once_the_client_handled_the_message(
    v2_replicas: V2Replicas, replicas: int, history: int,
) -> None:
    servers = v2_replicas(replicas, history_size=history)
    async with user(servers[-1], "alice") as alice:  # on the last replica
        asking = send_acked(servers[0], str(alice.client_id), {"n": 1})
        async with asyncio.timeout(10):
            assert json.loads(await take(alice)) == {"n": 1}
        assert not asking.done()  # acknowledged once the application asks for the next
        following = await handled(alice)
        async with asyncio.timeout(10):
            assert await asking == {"acked": True}

        binary = send_acked(servers[0], str(alice.client_id), "bytes", binary=True)
        async with asyncio.timeout(10):
            assert await following == b"bytes"  # (with history, in data_b64 as always)
        following = await handled(alice)
        assert await binary == {"acked": True}
        following.cancel()


async def test_an_unhandled_message_times_out_and_nobody_connected_is_false(
    v2_replicas: V2Replicas,
) -> None:
    (server,) = v2_replicas()
    async with user(server, "alice") as alice:
        asking = send_acked(server, str(alice.client_id), "never handled", timeout=0.3)
        assert await asking == {"error": "AckTimeoutError"}
        assert await alice.recv() == "never handled"  # delivered all the same
    assert await asyncio.to_thread(
        server.post, "/admin/send_acked/nobody/here?timeout=1", {"message": "x"}) == {
        "acked": False}


async def test_a_plain_client_gets_the_message_but_the_send_says_it_cannot_ack(
    v2_replicas: V2Replicas,
) -> None:
    (server,) = v2_replicas()
    token = server.post("/admin/token/alice")["token"]
    async with raw_connect(f"{server.ws}/ws",  # no subprotocol: the plain protocol
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        session = json.loads(await ws.recv())
        asking = send_acked(server, session["client_id"], "for a plain client")
        async with asyncio.timeout(10):
            assert await asking == {"error": "AckUnsupportedError"}
            assert await ws.recv() == "for a plain client"


async def test_only_a_token_the_socket_was_sent_acknowledges(v2_replicas: V2Replicas) -> None:
    (server,) = v2_replicas()
    token = server.post("/admin/token/alice")["token"]
    async with raw_connect(f"{server.ws}/ws", subprotocols=["stabilizer.v2"]) as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        client_id = json.loads(await ws.recv())["client_id"]
        asking = send_acked(server, client_id, "ack me", timeout=2)
        async with asyncio.timeout(10):
            frame = json.loads(await ws.recv())
        assert frame["data"] == "ack me"
        ref, _, origin = frame["ack"].partition("@")
        assert (len(ref), origin) == (16, "replica-0")
        for forged in (f"{'0' * 16}@replica-0", f"{ref}@elsewhere", "junk", 5, None):
            await ws.send(json.dumps({"type": "ack", "id": forged}))  # ignored, no reply
        await ws.send(json.dumps({"type": "ping"}))
        async with asyncio.timeout(10):
            assert json.loads(await ws.recv()) == {"type": "pong"}  # nothing came before it
        assert not asking.done()
        await ws.send(json.dumps({"type": "ack", "id": frame["ack"]}))
        async with asyncio.timeout(10):
            assert await asking == {"acked": True}


@pytest.mark.redis
@pytest.mark.parametrize("history", [0, 100], ids=["live", "history"])
async def test_a_users_send_counts_the_connections_that_handled_it(
    v2_replicas: V2Replicas, history: int,
) -> None:
    left, right = v2_replicas(2, history_size=history)
    token = left.post("/admin/token/alice")["token"]
    async with user(left, "alice") as tab, user(right, "alice") as other_tab, raw_connect(
            f"{left.ws}/ws", additional_headers={"Authorization": f"Bearer {token}"}) as plain:
        assert json.loads(await plain.recv())["type"] == "session"
        asking = asyncio.create_task(asyncio.to_thread(
            right.post, "/admin/send_user_acked/alice?timeout=10", {"message": "for all"}))
        async with asyncio.timeout(10):
            assert await take(tab) == "for all"
            assert await take(other_tab) == "for all"
            assert "for all" in await plain.recv()  # a plain client: delivered, no ack
        assert not asking.done()
        following = [await handled(tab), await handled(other_tab)]
        async with asyncio.timeout(15):
            assert await asking == {"acked": 2}
        for task in following:
            task.cancel()
        hurried = await asyncio.to_thread(
            right.post, "/admin/send_user_acked/alice?timeout=0.3", {"message": "fast"})
        assert hurried == {"acked": 0}  # nobody handled it in time
        assert await asyncio.to_thread(
            right.post, "/admin/send_user_acked/nobody?timeout=1", {"message": "x"}) == {
            "acked": 0}
