"""`python -m stabilizer` acting on clients (send, broadcast, kick) and watching, against two
live replicas on real Redis: standalone, Redis Cluster and Sentinel."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.cli.parser import build_parser, config_from
from stabilizer.cli.watch import watch
from tests.integration.test_users import tabs_of
from tests.support.cli import Run, cli, cli_env
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisSentinelSetup, free_port

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": "50", "history_ttl": "60", "session_ttl": "60"}


@dataclass
class Replicas:
    """Two started replicas and the CLI options that name their Redis and namespace."""

    a: WebSocketConnectionManager
    b: WebSocketConnectionManager
    options: list[str]
    env: dict[str, str] = field(default_factory=cli_env)

    async def cli(self, *args: str) -> Run:
        return await cli(*self.options, *args, env=self.env)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelSetup]:
    """A master, a replica and a sentinel for this module's Sentinel tests."""
    with RedisSentinelSetup() as setup:
        yield setup


async def start_replicas(namespace: str, settings: dict[str, Any],
                         options: list[str]) -> AsyncIterator[Replicas]:
    a, b = (WebSocketConnectionManager(WebSocketConfig(
        namespace=namespace, node_id=node_id, **QUIET, **settings))
        for node_id in ("cli-a", "cli-b"))
    try:
        for manager in (a, b):
            await manager.start()
        async with asyncio.timeout(10.0):  # both keepalives have run
            while await a.get_nodes() != ["cli-a", "cli-b"]:
                await asyncio.sleep(0.01)
        yield Replicas(a, b, [*options, "--namespace", namespace])
    finally:
        for manager in (a, b):
            await manager.graceful_shutdown(timeout=2.0)


@pytest.fixture
async def replicas(redis_url: str, namespace: str) -> AsyncIterator[Replicas]:
    """Two replicas on the session's standalone Redis."""
    async for pair in start_replicas(namespace, {"redis_url": redis_url},
                                     ["--redis-url", redis_url]):
        yield pair


@pytest.fixture(params=["standalone", "cluster", "sentinel"])
async def any_topology(request: pytest.FixtureRequest, namespace: str,
                       ) -> AsyncIterator[Replicas]:
    """Two replicas on standalone Redis, a three-master Cluster, or behind a Sentinel."""
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        settings = {"redis_url": url, "redis_cluster": True, "presence_buckets": 4}
        options = ["--redis-url", url, "--cluster", "--presence-buckets", "4"]
    else:
        url = request.getfixturevalue(
            "redis_url" if request.param == "standalone" else "sentinel")
        url = url if isinstance(url, str) else url.url
        settings, options = {"redis_url": url}, ["--redis-url", url]
    async for pair in start_replicas(namespace, settings, options):
        yield pair


async def test_every_command_works_on_every_topology(any_topology: Replicas) -> None:
    a, b = any_topology.a, any_topology.b
    alice, bob = FakeSocket("alice"), FakeSocket("bob")
    await a.connect("alice", alice)
    await b.connect("bob", bob)
    await b.join_group("bob", "room:1")

    nodes = await any_topology.cli("--json", "nodes")
    assert [(n["node_id"], n["clients"]) for n in nodes.json()] == [("cli-a", 1), ("cli-b", 1)]
    groups = await any_topology.cli("--json", "groups")
    assert groups.json() == [{"group": "room:1", "members": 1}]
    located = await any_topology.cli("--json", "locate", "bob")
    assert located.json()["node_id"] == "cli-b"

    sent = await any_topology.cli("send", "alice", "hello alice")
    assert (sent.code, sent.out) == (0, "sent to alice\n")
    assert await alice.next() == "hello alice"

    everyone = await any_topology.cli("broadcast", "hello all")
    assert (everyone.code, everyone.out) == (0, "broadcast reached 2 node(s)\n")
    assert await alice.next() == "hello all"
    assert await bob.next() == "hello all"

    kicked = await any_topology.cli("kick", "bob", "--code", "4409", "--reason", "bye")
    assert (kicked.code, kicked.out) == (0, "closing bob with 4409\n")
    assert await bob.wait_closed() == (4409, "bye")

    watched = await any_topology.cli("--json", "watch", "--count", "1")
    assert watched.code == 0
    assert [n["node_id"] for n in watched.json_lines()[0]["nodes"]] == ["cli-a", "cli-b"]


async def test_send_and_kick_of_a_client_nobody_holds_exit_1(replicas: Replicas) -> None:
    sent, kicked, kicked_user, as_json = await asyncio.gather(
        replicas.cli("send", "nobody", "hi"), replicas.cli("kick", "nobody"),
        replicas.cli("kick", "--user", "nobody"), replicas.cli("--json", "send", "nobody", "x"))

    assert (sent.code, sent.out) == (1, "client nobody is not connected\n")
    assert (kicked.code, kicked.out) == (1, "client nobody is not connected\n")
    assert kicked_user.code == 1
    assert (as_json.code, as_json.json()) == (1, {"client_id": "nobody", "delivered": False})


async def test_kick_user_closes_every_tab_on_every_replica(replicas: Replicas) -> None:
    async with tabs_of((replicas.a, "ann/1"), (replicas.b, "ann/2")) as tabs:
        run = await replicas.cli("--json", "kick", "--user", "ann", "--code", "4403")

        assert (run.code, run.json()) == (0, {"user_id": "ann", "connections": 2,
                                              "code": 4403})
        for tab in tabs:
            assert (await tab.ws.wait_closed())[0] == 4403


async def test_with_history_from_the_environment_messages_are_sequenced(
    redis_url: str, namespace: str,
) -> None:
    settings = {"redis_url": redis_url, **{k: float(v) for k, v in HISTORY.items()}}
    settings["history_size"] = int(HISTORY["history_size"])
    async for pair in start_replicas(namespace, settings, []):
        # everything from the replicas' own variables: URL, namespace and history
        pair.env = cli_env(redis_url=redis_url, namespace=namespace, **HISTORY)
        pair.options = []
        carol = FakeSocket("carol")
        await pair.b.connect("carol", carol)
        await pair.a.broadcast("first")

        run = await pair.cli("--json", "broadcast", "second")

        assert run.code == 0
        assert (run.json()["offset"], run.json()["nodes"]) == (2, 2)
        frames = [await carol.next_json() for _ in range(2)]
        assert [(f["offset"], f["data"]) for f in frames] == [(1, "first"), (2, "second")]


async def test_watch_shows_nodes_and_the_rates_between_two_polls(replicas: Replicas) -> None:
    await replicas.b.connect("bob", FakeSocket("bob"))
    args = build_parser().parse_args([*replicas.options, "--json", "watch", "--count", "2",
                                      "--interval", "0.5"])
    out = io.StringIO()

    async def between_polls(seconds: float) -> None:  # two clients arrive between the polls
        assert seconds == 0.5
        await replicas.b.connect("carol", FakeSocket("carol"))
        await replicas.b.connect("dave", FakeSocket("dave"))

    code = await watch(config_from(args, cli_env()), args, out, pause=between_polls)

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert code == 0
    assert [(n["node_id"], n["clients"]) for n in first["nodes"]] == [("cli-a", 0),
                                                                      ("cli-b", 1)]
    assert first["connections_per_s"] is None  # nothing to compare with yet
    assert [(n["node_id"], n["clients"]) for n in second["nodes"]] == [("cli-a", 0),
                                                                       ("cli-b", 3)]
    assert second["seconds"] > 0
    rates = {n["node_id"]: n["connections_per_s"] for n in second["nodes"]}
    assert rates["cli-a"] == 0
    assert round(rates["cli-b"] * second["seconds"]) == 2
    assert round(second["connections_per_s"] * second["seconds"]) == 2
    assert all(0 <= n["last_seen_s"] <= 10 for n in second["nodes"])


async def test_watch_redraws_a_table_per_refresh(replicas: Replicas) -> None:
    run = await replicas.cli("watch", "--count", "2", "--interval", "0.1")

    assert run.code == 0
    frames = run.out.split("stabilizer watch")[1:]
    assert len(frames) == 2
    for frame in frames:
        lines = frame.splitlines()
        assert lines[1].startswith("nodes 2  connections 0  connections/s ")
        table = [line for line in lines[lines.index("") + 1:] if line]
        assert table[0].split() == ["NODE_ID", "CLIENTS", "CONN/S", "LAST_SEEN"]
        assert [row.split()[:2] for row in table[1:]] == [["cli-a", "0"], ["cli-b", "0"]]
    assert "connections/s -" in frames[0]
    assert "connections/s +0.0" in frames[1]


#: `python -m stabilizer` as a terminal starts it: Ctrl-C raises KeyboardInterrupt and is
#: not blocked, whatever the test runner's process inherited or set. Done in the child after
#: exec (a preexec_fn runs between fork and exec, where a lock another thread of the runner
#: held at the fork can hang the child).
AS_FROM_A_TERMINAL = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
sys.argv[0] = "stabilizer"
runpy.run_module("stabilizer", run_name="__main__", alter_sys=True)
"""


async def test_watch_stops_cleanly_on_ctrl_c(replicas: Replicas) -> None:
    parent = (signal.getsignal(signal.SIGINT),
              signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AS_FROM_A_TERMINAL, *replicas.options, "watch",
        "--interval", "0.2", env={**replicas.env, "PYTHONFAULTHANDLER": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20.0):
            assert (await process.stdout.readline()).startswith(b"stabilizer watch")
            process.send_signal(signal.SIGINT)
            _, err = await process.communicate()
    except TimeoutError:  # say where it is stuck (faulthandler dumps its threads on SIGABRT)
        process.send_signal(signal.SIGABRT)
        _, stuck = await process.communicate()
        raise AssertionError(f"watch did not stop (runner's SIGINT handler and blocked: "
                             f"{parent}):\n{stuck.decode(errors='replace')[-6000:]}") from None

    assert process.returncode == 0
    assert err == b""


@pytest.mark.parametrize("args", [
    pytest.param(["send", "", "hi"], id="empty-client-id"),
    pytest.param(["send", "x" * 322, "hi"], id="client-id-too-long"),
    pytest.param(["kick", ""], id="kick-empty-client-id"),
    pytest.param(["locate", ""], id="locate-empty-client-id"),
    pytest.param(["kick", "bob", "--code", "999"], id="unsendable-code"),
    pytest.param(["kick", "bob", "--code", "abc"], id="code-not-a-number"),
    pytest.param(["kick"], id="kick-nobody"),
    pytest.param(["kick", "bob", "--user", "ann"], id="kick-client-and-user"),
    pytest.param(["kick", "--user", ""], id="empty-user-id"),
    pytest.param(["broadcast"], id="broadcast-without-message"),
    pytest.param(["watch", "--count", "-1"], id="negative-count"),
    pytest.param(["watch", "--interval", "0"], id="zero-interval"),
])
async def test_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    run = await cli("--redis-url", f"redis://127.0.0.1:{free_port()}", *args)

    assert (run.code, run.out) == (2, "")
    assert run.err.count("\n") == 1
    assert run.err.startswith("python -m stabilizer: ")


@pytest.mark.parametrize("url", [
    pytest.param("redis+sentinel://127.0.0.1:26379", id="sentinel-without-service"),
    pytest.param("redis+sentinel://127.0.0.1:port/mymaster", id="sentinel-bad-port"),
    pytest.param("redis://127.0.0.1:port/0", id="bad-port"),
    pytest.param("http://127.0.0.1:6379", id="not-redis"),
])
async def test_bad_urls_exit_2_with_one_line(url: str) -> None:
    run = await cli("--redis-url", url, "send", "alice", "hi")

    assert (run.code, run.out) == (2, "")
    assert run.err.count("\n") == 1


async def test_no_redis_named_anywhere_exits_2() -> None:
    run = await cli("nodes")

    assert run.code == 2
    assert "STABILIZER_REDIS_URL" in run.err


@pytest.mark.parametrize("args", [
    pytest.param(["send", "alice", "hi"], id="send"),
    pytest.param(["broadcast", "hi"], id="broadcast"),
    pytest.param(["kick", "alice"], id="kick"),
    pytest.param(["kick", "--user", "ann"], id="kick-user"),
    pytest.param(["watch", "--count", "1"], id="watch"),
])
async def test_unreachable_redis_exits_3_with_one_line(args: list[str]) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there

    run = await cli("--redis-url", url, "--timeout", "1", *args)

    assert (run.code, run.out) == (3, "")
    assert run.err.count("\n") == 1
    assert run.err.startswith("python -m stabilizer: cannot reach Redis at redis://***@")
    assert "s3cret" not in run.err


@pytest.mark.parametrize("options", [
    pytest.param(["--redis-url", "redis+sentinel://127.0.0.1:{port}/mymaster"], id="sentinel"),
    pytest.param(["--redis-url", "redis://127.0.0.1:{port}", "--cluster"], id="cluster"),
])
@pytest.mark.parametrize("command", [["nodes"], ["send", "alice", "hi"]], ids=" ".join)
async def test_an_unreachable_sentinel_or_cluster_exits_3(options: list[str],
                                                          command: list[str]) -> None:
    port = free_port()
    run = await cli(*(part.format(port=port) for part in options), "--timeout", "1", *command)

    assert (run.code, run.out) == (3, "")
    assert run.err.count("\n") == 1
    assert run.err.startswith("python -m stabilizer: cannot reach Redis at ")
