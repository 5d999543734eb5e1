"""`python -m stabilizer` reading times out of datetime's range from Redis (a presence
entry's since, a node's deadline): shown as unreadable, the command goes on."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from stabilizer.backends.redis.keys import KeyLayout
from tests.support.cli import cli

pytestmark = pytest.mark.redis


async def test_times_out_of_range_are_shown_as_unreadable(redis_url: str,
                                                          namespace: str) -> None:
    keys = KeyLayout(namespace)
    redis = Redis.from_url(redis_url)
    try:  # as a damaged entry or an odd writer could leave them
        await redis.hset(keys.presence(0), "bob", "node-x|c1|99999999999999999999")
        await redis.hset(keys.presence(0), "ann", "node-x|c2|-99999999999999999999")
        await redis.zadd(keys.nodes, {"node-y": float("inf")})
    finally:
        await redis.aclose()
    options = ["--redis-url", redis_url, "--namespace", namespace]

    clients, located, nodes, as_json = await asyncio.gather(
        cli(*options, "clients"), cli(*options, "locate", "bob"), cli(*options, "nodes"),
        cli(*options, "--json", "nodes"))

    for run in (clients, located, nodes, as_json):
        assert (run.code, run.err) == (0, "")
    assert sorted(line.split()[0] for line in clients.out.splitlines()[1:]) == ["?", "?"]
    assert "?" in located.out.split()
    assert nodes.out.splitlines()[1].split() == ["node-y", "0", "?", "?"]
    assert as_json.json() == [{"node_id": "node-y", "clients": 0, "deadline": "?",
                               "expires_in": None}]
