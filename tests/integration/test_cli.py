"""`python -m stabilizer` against real Redis, with two live nodes holding fake sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from stabilizer import (
    BackendRefused,
    BackendUnavailable,
    Emitter,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.backends.redis.keys import KeyLayout
from tests.support.cli import Run, cli
from tests.support.fakes import FakeSocket
from tests.support.redis_server import free_port

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
ODD_CLIENT = "carol\n\u00e9*[x]"        # any string is a valid client id
ODD_GROUP = "lobby *?[x]\\ \u00fc"       # glob characters and all: only a raw suffix


@dataclass
class Cluster:
    redis_url: str
    namespace: str
    a: WebSocketConnectionManager
    b: WebSocketConnectionManager

    async def cli(self, *args: str) -> Run:
        """Run the CLI on this cluster's namespace in a subprocess."""
        return await cli("--redis-url", self.redis_url, "--namespace", self.namespace, *args)

    def local_connections(self) -> list[tuple[str, str, str]]:
        """(client_id, node_id, conn_id) of every connection, as the nodes see them."""
        found = []
        for manager in (self.a, self.b):
            for client_id in manager.get_active_connections():
                conn = manager.get_connection(client_id)
                assert conn is not None
                found.append((client_id, manager.node_id, conn.conn_id))
        return sorted(found)


@pytest.fixture
async def cluster(redis_url: str, namespace: str) -> AsyncIterator[Cluster]:
    """Node cli-a holds alice; cli-b holds bob and an oddly named client; two groups."""
    a, b = (WebSocketConnectionManager(WebSocketConfig(
        redis_url=redis_url, namespace=namespace, node_id=node_id, **QUIET))
        for node_id in ("cli-a", "cli-b"))
    try:
        for manager in (a, b):
            await manager.start()
        await a.connect("alice", FakeSocket("alice"))
        await b.connect("bob", FakeSocket("bob"))
        await b.connect(ODD_CLIENT, FakeSocket("odd"))
        await a.join_group("alice", "room:1")
        await b.join_group("bob", "room:1")
        await b.join_group(ODD_CLIENT, ODD_GROUP)
        async with asyncio.timeout(5.0):  # both keepalives have run (the maintenance loops)
            while await a.get_nodes() != ["cli-a", "cli-b"]:
                await asyncio.sleep(0.01)
        yield Cluster(redis_url, namespace, a, b)
    finally:
        for manager in (a, b):
            await manager.graceful_shutdown(timeout=2.0)


async def test_json_output_describes_nodes_clients_groups_and_totals(cluster: Cluster) -> None:
    nodes, clients, groups, stats = await asyncio.gather(
        cluster.cli("--json", "nodes"), cluster.cli("clients", "--json"),
        cluster.cli("--json", "groups"), cluster.cli("--json", "stats"))

    assert [(n["node_id"], n["clients"]) for n in nodes.json()] == [("cli-a", 1), ("cli-b", 2)]
    assert all(0 < n["expires_in"] <= 10.0 and n["deadline"].endswith("Z") for n in nodes.json())
    assert sorted((c["client_id"], c["node_id"], c["conn_id"]) for c in clients.json()) == (
        cluster.local_connections())
    assert groups.json() == sorted([{"group": "room:1", "members": 2},
                                    {"group": ODD_GROUP, "members": 1}],
                                   key=lambda g: str(g["group"]))
    assert stats.json() == {"connections": 3, "nodes": 2, "groups": 2}
    assert {nodes.code, clients.code, groups.code, stats.code} == {0}


async def test_locate_finds_a_client_on_its_node_and_fails_for_an_unknown_one(
    cluster: Cluster,
) -> None:
    found, odd, missing, missing_json = await asyncio.gather(
        cluster.cli("--json", "locate", "alice"), cluster.cli("--json", "locate", ODD_CLIENT),
        cluster.cli("locate", "nobody"), cluster.cli("--json", "locate", "nobody"))

    assert found.code == 0
    assert found.json()["node_id"] == "cli-a"
    alice = cluster.a.get_connection("alice")
    assert alice is not None
    assert found.json()["conn_id"] == alice.conn_id
    assert (odd.code, odd.json()["node_id"], odd.json()["client_id"]) == (0, "cli-b", ODD_CLIENT)
    assert (missing.code, missing.out) == (1, "client nobody is not connected\n")
    assert (missing_json.code, missing_json.json()) == (1, {"client_id": "nobody",
                                                            "node_id": None})


async def test_tables_for_humans_escape_raw_ids_and_honour_the_limit(cluster: Cluster) -> None:
    nodes, clients, limited, groups, stats = await asyncio.gather(
        cluster.cli("nodes"), cluster.cli("clients"), cluster.cli("clients", "--limit", "2"),
        cluster.cli("groups"), cluster.cli("stats"))

    assert nodes.out.splitlines()[0].split() == ["NODE_ID", "CLIENTS", "DEADLINE", "EXPIRES_IN"]
    assert [line.split()[:2] for line in nodes.out.splitlines()[1:]] == [["cli-a", "1"],
                                                                          ["cli-b", "2"]]
    lines = clients.out.splitlines()
    assert lines[0].split() == ["SINCE", "CONN_ID", "NODE_ID", "CLIENT_ID"]
    assert sorted(line.split()[-1] for line in lines[1:]) == sorted(
        ["alice", "bob", ODD_CLIENT.encode("unicode_escape").decode()])
    assert len(limited.out.splitlines()) == 1 + 2
    assert groups.out.splitlines() == [
        "MEMBERS  GROUP",
        f"1        {ODD_GROUP}",
        "2        room:1",
    ]
    assert [line.split() for line in stats.out.splitlines()] == [
        ["STAT", "VALUE"], ["connections", "3"], ["nodes", "2"], ["groups", "2"]]


async def test_an_unreachable_redis_fails_fast_with_one_clear_line() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there

    for command in (["nodes"], ["--json", "stats"], ["locate", "alice"]):
        run = await cli("--redis-url", url, "--timeout", "1", *command)
        assert run.code == 3
        assert run.out == ""
        assert run.err.count("\n") == 1
        assert run.err.startswith("python -m stabilizer: cannot reach Redis at redis://***@")
        assert "s3cret" not in run.err


@pytest.mark.parametrize("args", [
    pytest.param(["nodes"], id="no-redis-url"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1"], id="no-command"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "teleport"], id="unknown-command"),
    pytest.param(["--redis-url", "http://127.0.0.1:1", "nodes"], id="not-a-redis-url"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "--namespace", "a b", "nodes"],
                 id="bad-namespace"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "clients", "--limit", "-1"],
                 id="negative-limit"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "locate"], id="locate-without-id"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "watch", "--interval", "nan"],
                 id="interval-nan"),
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "send", "a", "x\udcff"],
                 id="message-no-frame-can-carry"),  # (bytes the locale cannot decode)
    pytest.param(["--redis-url", "redis://127.0.0.1:1", "broadcast", "x\udcff"],
                 id="broadcast-no-frame-can-carry"),
])
async def test_wrong_arguments_exit_2_with_one_line(args: list[str]) -> None:
    run = await cli(*args)

    assert run.code == 2
    assert run.out == ""
    assert run.err.count("\n") == 1
    assert run.err.startswith("python -m stabilizer: ")


async def test_watch_takes_a_damaged_broadcast_offset_for_none(cluster: Cluster) -> None:
    """A stream record that is not what a node writes (a foreign or damaged key) used to
    end `watch` with a traceback."""
    redis = Redis.from_url(cluster.redis_url)
    try:
        await redis.hset(KeyLayout(cluster.namespace).stream_meta("all"), "offset", "junk")
    finally:
        await redis.aclose()
    run = await cluster.cli("--json", "watch", "--count", "1", "--interval", "0.01")
    assert run.code == 0, run.err
    assert "Traceback" not in run.err


async def test_a_key_of_another_application_is_named_as_such_not_unreachable(
        cluster: Cluster) -> None:
    """Redis answered (WRONGTYPE): the CLI said it could not reach it."""
    redis = Redis.from_url(cluster.redis_url)
    try:
        await redis.delete(KeyLayout(cluster.namespace).nodes)
        await redis.set(KeyLayout(cluster.namespace).nodes, "not a sorted set")
    finally:
        await redis.aclose()
    run = await cluster.cli("nodes")
    assert run.code == 3
    assert "answered with an error" in run.err
    assert "WRONGTYPE" in run.err
    assert "cannot reach" not in run.err
    assert run.err.count("\n") == 1


async def test_a_script_refused_by_redis_is_named_as_such_not_unreachable(
        cluster: Cluster) -> None:
    """A sequenced broadcast whose stream's offset key is another application's string: the
    SEQUENCE script fails with WRONGTYPE, and the CLI said it could not reach Redis."""
    redis = Redis.from_url(cluster.redis_url)
    try:
        await redis.set(KeyLayout(cluster.namespace).stream_meta("all"), "not a hash")
    finally:
        await redis.aclose()
    run = await cluster.cli("--history-size", "50", "broadcast", "hello")
    assert run.code == 3
    assert "answered with an error" in run.err
    assert "WRONGTYPE" in run.err
    assert "cannot reach" not in run.err
    assert run.err.count("\n") == 1


async def test_a_refusal_that_is_not_about_a_key_names_no_other_application(
        redis_url: str) -> None:
    """A database index Redis does not have: the line blamed another application's key."""
    run = await cli("--redis-url", f"redis://{urlsplit(redis_url).netloc}/99999", "nodes")
    assert run.code == 3
    assert "answered with an error" in run.err
    assert "DB index" in run.err
    assert "another application" not in run.err
    assert run.err.count("\n") == 1


async def test_an_emitter_reports_a_refused_script_as_a_refusal(
        redis_url: str, namespace: str) -> None:
    """Redis answered: BackendRefused, still a BackendUnavailable for the retry loops."""
    redis = Redis.from_url(redis_url)
    try:
        await redis.set(KeyLayout(namespace).stream_meta("all"), "not a hash")
        async with Emitter(redis_url, namespace=namespace, history_size=50) as emitter:
            with pytest.raises(BackendRefused, match="WRONGTYPE") as info:
                await emitter.broadcast("hello")
    finally:
        await redis.aclose()
    assert isinstance(info.value, BackendUnavailable)
