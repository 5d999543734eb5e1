"""EVALSHA batches written straight to a pooled connection (backends/redis/exchange.py),
against a real Redis: replies in order, an error reply in its own place, the same bytes
whether hiredis or redis-py packs them, a call that cannot be packed failing alone (also
through the batcher, and in a real Cluster's per-master pipelines), and a connection
that broke mid-batch never returned to the pool still connected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

from stabilizer.backends.redis import exchange
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.errors import BackendUnavailable
from stabilizer.node.tasks import TaskOwner
from tests.support.redis_server import RedisClusterServers

pytestmark = pytest.mark.redis

#: echoes its key and arguments; an argument "fail" makes it answer an error reply
ECHO = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
local out = {KEYS[1]}
for i = 1, #ARGV do out[#out + 1] = ARGV[i] end
return out
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=1)
    redis = Redis.from_pool(pool)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture(params=["hiredis", "redis-py"])
def packing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    assert exchange.C_PACKING, "hiredis is a dependency of the redis extra"
    if request.param == "redis-py":
        monkeypatch.setattr(exchange, "C_PACKING", False)
    return str(request.param)


async def test_a_batch_answers_each_call_in_order_with_an_error_reply_in_its_place(
        client: Redis, packing: str) -> None:
    sha = await client.script_load(ECHO)
    calls: list[tuple[list[Any], list[Any]]] = [
        (["k1"], ["a", 1]), (["k2"], ["fail"]), (["k3"], ["é", b"\xff\x00", 2.5])]
    replies = await exchange.evalsha_batch(client, sha, calls)
    assert replies[0] == [b"k1", b"a", b"1"]
    assert isinstance(replies[1], ResponseError)
    assert "asked to fail" in str(replies[1])
    assert replies[2] == [b"k3", "é".encode(), b"\xff\x00", b"2.5"]
    # the one pooled connection is back, in step: the next command reads its own reply
    assert await client.echo("next") == b"next"


async def test_an_unknown_script_is_answered_noscript_per_call(
        client: Redis, packing: str) -> None:
    sha = await client.script_load(ECHO)
    await client.script_flush()
    replies = await exchange.evalsha_batch(client, sha, [(["k"], ["a"]), (["k"], ["b"])])
    assert all(isinstance(reply, NoScriptError) for reply in replies)
    assert await client.echo("next") == b"next"


def test_hiredis_packs_the_bytes_redis_py_would() -> None:
    assert exchange.C_PACKING  # (without hiredis this would compare redis-py with itself)
    calls: list[tuple[list[Any], list[Any]]] = [
        (["presence:{ns}", "node"], ["client é", b"\x00\xff", 0, 17, -3, 1.5, ""]),
        ([], ["only args"])]
    redis_py = Connection()
    ours = exchange.packed("f" * 40, calls, redis_py.pack_command)
    theirs = redis_py.pack_commands(
        [("EVALSHA", "f" * 40, len(keys), *keys, *args) for keys, args in calls])
    assert b"".join(command for command in ours
                    if not isinstance(command, Exception)) == b"".join(theirs)


def test_a_call_packed_ahead_is_sent_as_packed_and_a_bad_one_keeps_its_error() -> None:
    """A batcher packs its calls as they are submitted (their lists do not wait for the
    round trip); packed() then takes them as they are, next to calls not packed yet."""
    assert exchange.C_PACKING
    sha = "f" * 40
    redis_py = Connection()
    ahead = exchange.packed_ahead(sha, ["k"], ["client é", 3])
    assert ahead == b"".join(redis_py.pack_command("EVALSHA", sha, 1, "k", "client é", 3))
    refused = exchange.packed_ahead(sha, ["k"], ["lone \ud800"])
    assert isinstance(refused, UnicodeEncodeError)
    assert exchange.packed(sha, [ahead, refused, (["k"], ["later"])], redis_py.pack_command) \
        == [ahead, refused, b"".join(redis_py.pack_command("EVALSHA", sha, 1, "k", "later"))]


@pytest.mark.parametrize("bad", [
    pytest.param("lone \ud800 surrogate", id="text-utf8-cannot-encode"),
    pytest.param(None, id="not-a-redis-value"),
])
async def test_a_call_that_cannot_be_packed_fails_alone(
        client: Redis, packing: str, bad: Any) -> None:
    sha = await client.script_load(ECHO)
    replies = await exchange.evalsha_batch(
        client, sha, [(["k1"], ["a"]), (["k2"], ["b", bad]), (["k3"], ["c"])])
    assert replies[0] == [b"k1", b"a"]
    assert isinstance(replies[1], DataError | UnicodeEncodeError)
    assert replies[2] == [b"k3", b"c"]
    assert await client.echo("next") == b"next"


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    if request.param == "redis":
        redis: Any = Redis.from_url(redis_url)
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        redis = RedisCluster.from_url(cluster.url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.mark.parametrize("bad", [
    pytest.param("\ud800", id="text-utf8-cannot-encode"),
    pytest.param(None, id="not-a-redis-value"),
])
async def test_a_batch_with_an_unencodable_call_answers_the_others(store: Any,
                                                                  bad: Any) -> None:
    """Calls that meet in the batcher travel together (a Cluster: one pipeline per
    master): one whose argument cannot be encoded fails alone, and the batcher goes on. It
    used to fail the whole batch, and every caller in it heard that the node had
    stopped."""
    await store.script_load(ECHO)
    core = RedisCore(store, KeyLayout("exchange"), op_timeout=5.0, pool_size=4)
    core.tasks = TaskOwner()
    batcher = ScriptBatcher(core, store.register_script(ECHO), "register")
    try:
        answers = await asyncio.gather(
            batcher.submit(["k1"], ["a"]), batcher.submit(["k2"], [bad]),
            batcher.submit(["k3"], ["c"]), return_exceptions=True)
        good, bad, other = answers
        assert good == [b"k1", b"a"]
        assert isinstance(bad, BackendUnavailable)
        assert other == [b"k3", b"c"]
        assert await batcher.submit(["k4"], ["d"]) == [b"k4", b"d"]
    finally:
        await core.tasks.stop(1.0)


class BrokenConnection:
    """A pooled connection whose link breaks after the first of the batch's replies."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.replies = 0
        self.dropped = False

    def pack_command(self, *args: Any) -> list[bytes]:
        return Connection().pack_command(*args)

    async def send_packed_command(self, data: list[bytes]) -> None:
        self.sent.extend(data)

    async def read_response(self) -> Any:
        self.replies += 1
        if self.replies > 1:
            raise RedisConnectionError("Connection closed by server.")
        return b"first"

    async def disconnect(self, nowait: bool = False) -> None:
        self.dropped = True


class OnePool:
    def __init__(self, conn: BrokenConnection) -> None:
        self.conn = conn
        self.released: list[BrokenConnection] = []

    async def get_connection(self) -> BrokenConnection:
        return self.conn

    async def release(self, conn: BrokenConnection) -> None:
        self.released.append(conn)


async def test_a_batch_whose_link_breaks_drops_the_connection_before_returning_it() -> None:
    """A connection that failed mid-batch has replies in flight: it goes back to the pool
    disconnected, so no later command can read this batch's replies as its own."""
    conn = BrokenConnection()
    pool = OnePool(conn)
    client: Any = type("Client", (), {"connection_pool": pool})()
    with pytest.raises(RedisConnectionError):
        await exchange.evalsha_batch(client, "f" * 40, [(["k"], ["a"]), (["k"], ["b"])])
    assert conn.dropped
    assert pool.released == [conn]
    assert len(conn.sent) == 2  # both calls went out in the one write
