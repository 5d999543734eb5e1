"""Channels on replicas that share a real three-master Redis Cluster, where each group's
keys and channel live in the group's own slot (the spread layout, a Cluster's default):
subscriptions, publishes and a resume across real uvicorn replicas, with the Python
client."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from stabilizer.backends.redis.keys import KeyLayout
from tests.e2e.conftest import V2Replicas
from tests.e2e.test_channels import Inbox, members, send_group
from tests.e2e.v2_clients import user
from tests.support.redis_server import RedisClusterServers

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ROOMS = [f"public:room-{i}" for i in range(6)]


def masters_of(namespace: str, groups: list[str]) -> set[int]:
    """Which of the three masters serve the groups' member sets (`redis-cli --cluster
    create` gives three masters slots 0-5460, 5461-10922 and 10923-16383)."""
    keys = KeyLayout(namespace, spread=True)
    return {sum(key_slot(keys.group(g).encode()) > edge for edge in (5460, 10922))
            for g in groups}


async def test_channels_on_a_cluster_spread_over_its_masters(
    v2_replicas: V2Replicas, redis_cluster: RedisClusterServers,
) -> None:
    left, right = v2_replicas(2, redis_url=redis_cluster.url, redis_cluster="true",
                              history_size=100)
    # the rooms are not all on one shard
    assert len(masters_of(left.env["STABILIZER_NAMESPACE"], ROOMS)) > 1
    async with user(left, "alice") as alice, user(right, "bob") as bob:
        alices = {room: Inbox() for room in ROOMS}
        bobs = {room: Inbox() for room in ROOMS}
        for room in ROOMS:
            await alice.subscribe(room, alices[room])
            await bob.subscribe(room, bobs[room])
        for room in ROOMS:
            assert sorted(await members(right, room)) == sorted(
                [alice.client_id, bob.client_id])
            await alice.publish(room, f"hello {room}")
            expected = f'{{"from":"alice","text":"hello {room}"}}'
            assert await bobs[room].next() == expected
            assert await alices[room].next() == expected

        first = bob.session
        await asyncio.to_thread(right.post, "/admin/disconnect_user/bob?code=1012")
        for room in ROOMS:  # kept for bob's session in each room's own slot
            await send_group(left, room, f"while away {room}")
        for room in ROOMS:
            assert await bobs[room].next() == f"while away {room}"
            assert await alices[room].next() == f"while away {room}"
        assert bob.session is not first
        assert bob.session is not None
        assert bob.session.resumed

        await alice.unsubscribe(ROOMS[0])
        assert await members(right, ROOMS[0]) == [bob.client_id]
        await send_group(right, ROOMS[0], "after")
        assert await bobs[ROOMS[0]].next() == "after"
        assert alices[ROOMS[0]].queue.empty()
