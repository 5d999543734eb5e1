"""Acknowledged sends whose client can no longer acknowledge them (docs/protocol.md 6.7),
on real uvicorn replicas of tests/e2e/v2_app.py sharing one real Redis: the send is told as
soon as the client's node knows, not at its timeout.

Before, a connection that ended without a session to resume dropped the tokens it awaited
without a word, and a resume's replay handed a plain client an acknowledged message without
saying that it cannot acknowledge it: both sends waited out their whole timeout."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as raw_connect

from tests.e2e.conftest import V2Replicas
from tests.e2e.test_acks import send_acked
from tests.integration.test_emitter import until
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

#: an acknowledgement timeout no test waits out: every outcome below comes long before it
#: (the admin API's HTTP request gives up after 10 s, failing the test)
LONG = 3600.0


async def v2_tab(server: UvicornProcess, device: str,
                 **resume: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """A raw v2 socket of user alice's `device` (resuming with `reconnect_token` and
    `positions`, if given) and its session frame."""
    token = server.post("/admin/token/alice")["token"]
    ws = await raw_connect(f"{server.ws}/ws", subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connect", "token": token, "device": device, **resume}))
    welcome = await next_frame(ws)
    assert welcome["type"] == "session"
    return ws, welcome


async def next_frame(ws: ClientConnection, kind: str | None = None) -> dict[str, Any]:
    """The next frame (of type `kind`, if given) that is not a heartbeat ping."""
    while True:
        async with asyncio.timeout(10):
            frame = json.loads(await ws.recv())
        if frame.get("type") != "ping" and kind in (None, frame.get("type")):
            return frame  # type: ignore[no-any-return]


async def nobody_of_alice_on(server: UvicornProcess) -> None:
    """Wait until no connection of alice's is listed: a close was settled."""
    async def gone() -> bool:
        return await asyncio.to_thread(server.get, "/admin/users/alice") == (200, [])
    await until(gone, timeout=10)


async def kept_for(redis: RedisServer, client_id: str) -> None:
    """Wait until the client's stream in Redis holds a message: a send to the client while
    it is away was sequenced (it is replayed, not delivered live, when the client returns)."""
    client = Redis.from_url(redis.url)

    async def kept() -> bool:
        async for key in client.scan_iter(match=f"*:h:c:{client_id}"):
            return bool(await client.xlen(key))
        return False
    try:
        await until(kept, timeout=10)
    finally:
        await client.aclose()


@pytest.mark.parametrize("history", [0, 100], ids=["live", "history"])
async def test_a_send_fails_once_its_client_left_without_a_session_to_resume(
    v2_replicas: V2Replicas, history: int,
) -> None:
    asking, holding = v2_replicas(2, history_size=history, session_ttl=60)
    ws, welcome = await v2_tab(holding, "d1")
    sending = send_acked(asking, welcome["client_id"], "never handled", timeout=LONG)
    frame = await next_frame(ws, "message")
    assert (frame["data"], frame["ack"].endswith("@replica-0")) == ("never handled", True)
    if history:  # a client's own close keeps its session: the application ends it
        assert holding.post("/admin/disconnect_user/alice?code=1000") == {"closed": 1}
    else:
        await ws.close(1000)
    async with asyncio.timeout(15):
        assert await sending == {"error": "AckTimeoutError"}
    await ws.close()


async def test_a_users_send_stops_waiting_for_a_tab_that_left_without_a_session(
    v2_replicas: V2Replicas,
) -> None:
    asking, holding = v2_replicas(2)
    staying, _ = await v2_tab(asking, "staying")
    leaving, _ = await v2_tab(holding, "leaving")
    sending = asyncio.create_task(asyncio.to_thread(
        asking.post, f"/admin/send_user_acked/alice?timeout={LONG}", {"message": "for both"}))
    handled = await next_frame(staying, "message")
    assert (await next_frame(leaving, "message"))["data"] == "for both"
    await staying.send(json.dumps({"type": "ack", "id": handled["ack"]}))
    await leaving.close(1000)
    async with asyncio.timeout(15):
        assert await sending == {"acked": 1}
    await staying.close()


async def test_a_client_that_went_away_with_its_session_is_still_awaited(
    v2_replicas: V2Replicas,
) -> None:
    """The other side: a resumable session is replayed the message, whose acknowledgement
    counts; the close did not fail the send."""
    asking, holding = v2_replicas(2, history_size=100, session_ttl=60)
    ws, welcome = await v2_tab(holding, "d1")
    sending = send_acked(asking, welcome["client_id"], "handled later", timeout=LONG)
    frame = await next_frame(ws, "message")
    await ws.close(1001)  # going away: the session stays resumable
    await nobody_of_alice_on(asking)
    back, _ = await v2_tab(holding, "d1", reconnect_token=welcome["token"],
                           positions={frame["stream"]: [frame["offset"] - 1, frame["epoch"]]})
    replayed = await next_frame(back, "message")
    assert (replayed["data"], replayed["ack"]) == ("handled later", frame["ack"])
    await back.send(json.dumps({"type": "ack", "id": replayed["ack"]}))
    async with asyncio.timeout(15):
        assert await sending == {"acked": True}
    await back.close()


async def test_a_plain_client_replayed_the_message_on_its_return_fails_the_send(
    v2_replicas: V2Replicas, redis_server: RedisServer,
) -> None:
    asking, holding = v2_replicas(2, history_size=100, session_ttl=60)
    token = holding.post("/admin/token/alice")["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    async with raw_connect(f"{holding.ws}/ws", additional_headers=bearer) as ws:  # plain
        welcome = await next_frame(ws, "session")
    await nobody_of_alice_on(asking)  # away, its session resumable (a client's close)
    sending = send_acked(asking, welcome["client_id"], "while away", timeout=LONG)
    await kept_for(redis_server, welcome["client_id"])
    query = urllib.parse.urlencode({"token": welcome["token"], "positions": "{}"})
    async with raw_connect(f"{holding.ws}/ws?{query}", additional_headers=bearer) as back:
        assert (await next_frame(back, "session"))["resumed"] is True
        replayed = await next_frame(back, "message")  # (with history, sequenced frames)
        assert (replayed["data"], replayed["ack"].endswith("@replica-0")) == ("while away",
                                                                              True)
        async with asyncio.timeout(15):
            assert await sending == {"error": "AckUnsupportedError"}


async def test_a_send_fails_once_a_fresh_session_of_its_client_replaced_the_socket(
    v2_replicas: V2Replicas,
) -> None:
    """Found by review: with history, the client came back without its reconnect token (a
    fresh session, on another replica) while the socket it got the message on was open.
    The replaced socket's replica was not told how the newer one began, so it kept waiting
    for a replay that a fresh session never sends: the send waited out its timeout."""
    asking, holding = v2_replicas(2, history_size=100, session_ttl=60)
    ws, welcome = await v2_tab(holding, "d1")
    sending = send_acked(asking, welcome["client_id"], "never handled", timeout=LONG)
    await next_frame(ws, "message")
    fresh, again = await v2_tab(asking, "d1")
    assert (again["client_id"], again["resumed"]) == (welcome["client_id"], False)
    async with asyncio.timeout(15):
        assert await sending == {"error": "AckTimeoutError"}
    await fresh.close()
    await ws.close()
