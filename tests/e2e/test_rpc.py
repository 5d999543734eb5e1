"""Remote procedure calls (docs/protocol.md 6.5) from stabilizer.client against real uvicorn
serving tests/e2e/v2_app.py, and the exact frames a server answers a raw v2 socket with."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect

from stabilizer import RPCError
from stabilizer.client import ClientConnection, RetryPolicy, connect
from tests.e2e.test_client_v2 import SECRET
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
FAST = RetryPolicy(base=0.05, cap=0.3)


Launch = Callable[..., UvicornProcess]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start v2_app under uvicorn with STABILIZER_* settings (heartbeats off)."""
    started: list[UvicornProcess] = []

    def start(**settings: object) -> UvicornProcess:
        env = {"V2_APP_JWT_SECRET": SECRET, **{f"STABILIZER_{key.upper()}": str(value)
                                               for key, value in {**QUIET, **settings}.items()}}
        started.append(UvicornProcess(app="tests.e2e.v2_app:app", env=env).start())
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def server(launch: Launch) -> UvicornProcess:
    return launch()


def alice(server: UvicornProcess) -> ClientConnection:
    def token() -> str:
        return str(server.post("/admin/token/alice")["token"])
    return connect(f"{server.ws}/ws", protocol=2, get_token=token, retry=FAST)


async def held(server: UvicornProcess) -> dict[str, int]:
    return dict((await asyncio.to_thread(server.get, "/admin/held"))[1])


async def until_held(server: UvicornProcess, key: str, count: int) -> None:
    async with asyncio.timeout(10):
        while (await held(server))[key] != count:
            await asyncio.sleep(0.02)


async def test_a_call_returns_the_procedures_value_with_the_callers_identity(
    server: UvicornProcess,
) -> None:
    async with alice(server) as conn:
        assert await conn.rpc("add", {"a": 2, "b": 3}) == 5
        who = await conn.rpc("whoami", [1, "two", None])
        assert who == {"client_id": conn.client_id, "user_id": "alice",
                       "params": [1, "two", None]}
        assert (await conn.rpc("whoami"))["params"] is None  # no params: null


async def test_a_failing_procedure_answers_with_an_error_and_the_connection_stays(
    server: UvicornProcess,
) -> None:
    async with alice(server) as conn:
        with pytest.raises(RPCError) as refused:
            await conn.rpc("refuse")
        assert (refused.value.code, refused.value.message, refused.value.data) == (
            "forbidden", "not for you", {"needed": "admin"})
        for method in ("crash", "not_json"):  # the details go to the server's log only
            with pytest.raises(RPCError) as failed:
                await conn.rpc(method)
            assert (failed.value.code, failed.value.message) == ("internal", "internal error")
        with pytest.raises(RPCError) as unknown:
            await conn.rpc("nothing_here")
        assert unknown.value.code == "unknown_method"
        session = conn.session
        await conn.send("still here")
        async with asyncio.timeout(5):
            assert await conn.recv() == f"{conn.client_id}: still here"
        assert conn.session is session  # the same socket throughout
        stats = (await asyncio.to_thread(server.get, "/stats"))[1]
        counters = stats["counters"]
        assert (counters["rpc_calls"], counters["rpc_failures"]) == (4, 4)


async def test_a_running_call_holds_up_neither_messages_nor_other_calls(
    server: UvicornProcess,
) -> None:
    async with alice(server) as conn:
        holding = asyncio.create_task(conn.rpc("hold"))
        await until_held(server, "running", 1)
        await conn.send("meanwhile")
        async with asyncio.timeout(5):
            assert await conn.recv() == f"{conn.client_id}: meanwhile"
        assert await conn.rpc("add", {"a": 1, "b": 1}) == 2
        assert not holding.done()
        assert await conn.rpc("release") == 1
        assert await holding == "released"


async def test_a_procedure_past_rpc_timeout_is_cancelled_and_answered_timeout(
    launch: Launch,
) -> None:
    server = launch(rpc_timeout=0.5)
    async with alice(server) as conn:
        with pytest.raises(RPCError) as late:
            await conn.rpc("hold", timeout=10)
        assert late.value.code == "timeout"
        assert (await held(server))["cancelled"] == 1
        assert await conn.rpc("add", {"a": 1, "b": 2}) == 3


async def test_calls_over_the_in_flight_limit_are_refused_as_overloaded(
    launch: Launch,
) -> None:
    server = launch(rpc_max_in_flight=2)
    async with alice(server) as conn:
        first = asyncio.create_task(conn.rpc("hold"))
        second = asyncio.create_task(conn.rpc("hold"))
        await until_held(server, "running", 2)
        with pytest.raises(RPCError) as refused:
            await conn.rpc("add", {"a": 1, "b": 1})
        assert refused.value.code == "overloaded"
        first.cancel()  # the client stops waiting; the call still runs on the server
        await asyncio.wait([first])
        with pytest.raises(RPCError):
            await conn.rpc("release")  # still two running
        second_conn = alice(server)  # another connection has its own limit
        async with second_conn:
            assert await second_conn.rpc("release") == 2
        assert await second == "released"


async def test_the_clients_timeout_and_a_lost_socket_fail_the_call_and_the_next_works(
    server: UvicornProcess,
) -> None:
    async with alice(server) as conn:
        with pytest.raises(RPCError) as late:
            await conn.rpc("hold", timeout=0.3)
        assert late.value.code == "timeout"
        holding = asyncio.create_task(conn.rpc("hold"))
        await until_held(server, "running", 2)
        await asyncio.to_thread(server.post, "/admin/disconnect_user/alice?code=1012")
        with pytest.raises(RPCError) as lost:
            await holding
        assert lost.value.code == "disconnected"
        await until_held(server, "cancelled", 2)  # the socket's calls end with it
        assert await conn.rpc("add", {"a": 2, "b": 2}) == 4  # on the new socket


async def test_a_bad_call_is_refused_before_it_is_sent(server: UvicornProcess) -> None:
    async with alice(server) as conn:
        with pytest.raises(ValueError, match="method name"):
            await conn.rpc("no spaces")
        with pytest.raises(ValueError, match="not JSON compliant"):
            await conn.rpc("add", {"a": float("nan")})
    with pytest.raises(RuntimeError, match="protocol=2"):
        await ClientConnection(f"{server.ws}/plain").rpc("add")


async def test_the_frames_a_raw_socket_gets_for_good_and_bad_calls(
    server: UvicornProcess,
) -> None:
    token = server.post("/admin/token/alice")["token"]
    async with raw_connect(f"{server.ws}/ws", subprotocols=["stabilizer.v2"]) as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        assert json.loads(await ws.recv())["type"] == "session"

        async def answer(frame: dict[str, Any] | str) -> dict[str, Any]:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
            async with asyncio.timeout(5):
                return dict(json.loads(await ws.recv()))

        assert await answer({"type": "rpc", "id": "a-1", "method": "add",
                             "params": {"a": 1, "b": 2}}) == {
            "type": "reply", "id": "a-1", "result": 3.0}
        assert await answer({"type": "rpc", "id": 7, "method": "bad method"}) == {
            "type": "reply", "id": 7, "error": {
                "code": "bad_request",
                "message": "rpc: method must be 1-128 characters of A-Z a-z 0-9 and . _ : / -"}}
        for bad_id in (None, -1, 2**53, 1.5, True, "", "x" * 65, [1]):
            reply = await answer({"type": "rpc", "id": bad_id, "method": "add"})
            assert (reply["type"], reply["code"]) == ("error", "bad_frame"), bad_id
        await ws.send(json.dumps({"type": "rpc", "id": 1, "method": "hold"}))
        duplicate = await answer({"type": "rpc", "id": 1, "method": "add"})
        assert duplicate["error"]["code"] == "bad_request"
        assert await answer({"type": "rpc", "id": 2, "method": "release"}) == {
            "type": "reply", "id": 2, "result": 1}
        assert json.loads(await ws.recv()) == {"type": "reply", "id": 1, "result": "released"}


async def test_calls_count_against_the_message_rate_limit(launch: Launch) -> None:
    server = launch(rate_limit_messages=1, rate_limit_window=3600)
    async with alice(server) as conn:
        assert await conn.rpc("add", {"a": 1, "b": 1}) == 2
        with pytest.raises(RPCError) as limited:
            await conn.rpc("add", {"a": 1, "b": 1})
        assert limited.value.code == "rate_limited"
        assert conn.session is not None  # answered, not closed
