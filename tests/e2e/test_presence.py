"""Presence with state on real uvicorn replicas sharing one real Redis, with the Python v2
client: two clients on different replicas see each other join, update and leave
(docs/protocol.md 6.8)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from tests.e2e.conftest import V2Replicas
from tests.e2e.v2_clients import user

pytestmark = pytest.mark.e2e

ROOM = "presence:room"


def names(presence: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    return {key: [item["meta"] for item in items] for key, items in presence.items()}


@pytest.mark.redis
async def test_clients_on_two_replicas_see_each_other_join_update_and_leave(
    v2_replicas: V2Replicas,
) -> None:
    one, two = v2_replicas(2, presence_diff_window=0.02)
    async with user(one, "alice") as alice:
        changes: list[tuple[dict[str, Any], dict[str, Any]]] = []
        await alice.subscribe(ROOM, presence=True,  # (the state may come before it returns)
                              on_presence=lambda joins, leaves: changes.append((joins, leaves)))
        seen = alice.presence(ROOM)
        await seen.until(lambda p: names(p) == {"alice": [{"name": "alice"}]})
        async with user(two, "bob") as bob:
            await bob.subscribe(ROOM, presence=True)
            both = {"alice": [{"name": "alice"}], "bob": [{"name": "bob"}]}
            await bob.presence(ROOM).until(lambda p: names(p) == both)
            await seen.until(lambda p: names(p) == both)

            await asyncio.to_thread(one.post, f"/admin/update_presence/{ROOM}/{bob.client_id}",
                                    {"name": "bob", "typing": True})
            updated = {"alice": [{"name": "alice"}], "bob": [{"name": "bob", "typing": True}]}
            await seen.until(lambda p: names(p) == updated)
            await bob.presence(ROOM).until(lambda p: names(p) == updated)
            await bob.unsubscribe(ROOM)
        await seen.until(lambda p: names(p) == {"alice": [{"name": "alice"}]})
    joins = [key for joined, _ in changes for key in joined]
    leaves = [key for _, left in changes for key in left]
    assert joins == ["alice", "bob", "bob"]  # the state, the join, the update's new entry
    assert leaves == ["bob", "bob"]  # the update's old entry, the unsubscribe


async def test_a_subscribe_with_a_non_boolean_presence_gets_an_error_reply(
    v2_replicas: V2Replicas,
) -> None:
    (server,) = v2_replicas()
    token = (await asyncio.to_thread(server.post, "/admin/token/carol"))["token"]
    async with raw_connect(f"{server.ws}/ws", subprotocols=["stabilizer.v2"]) as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": ROOM,
                                  "presence": "yes"}))
        async with asyncio.timeout(5):
            reply = json.loads(await ws.recv())
        assert reply["type"] == "reply"
        assert reply["id"] == 1
        assert reply["error"]["code"] == "bad_request"
        assert "presence must be true or false" in reply["error"]["message"]
        await ws.send(json.dumps({"type": "subscribe", "id": 2, "channel": ROOM,
                                  "presence": True}))
        async with asyncio.timeout(5):
            frames = [json.loads(await ws.recv()) for _ in range(2)]
        assert frames[0] == {"type": "reply", "id": 2, "result": {"channel": ROOM}}
        assert frames[1]["type"] == "presence_state"
        assert frames[1]["presence"] == {"carol": [{"client_id": frames[1]["presence"][
            "carol"][0]["client_id"], "meta": {"name": "carol"}}]}
