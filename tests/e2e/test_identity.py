"""Users and identity end to end (issue 11): uvicorn replicas of tests/e2e/users_app.py on
one real Redis, raw WebSocket clients speaking plain and v2, JWTs made here."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stabilizer import CloseCode
from tests.e2e.users_app import AUDIENCE, ISSUER, SECRET
from tests.support.jwks import JWKSServer, Key
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

APP = "tests.e2e.users_app:app"
V2 = "stabilizer.v2"
QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
_RUN = itertools.count(1)
Servers = Callable[..., list[UvicornProcess]]


@pytest.fixture
def servers(redis_server: RedisServer) -> Iterator[Servers]:
    """Start N replicas of the users app sharing one namespace (N=1: embedded backend)."""
    started: list[UvicornProcess] = []

    def start(count: int = 1, *, app_env: dict[str, str] | None = None,
              **settings: object) -> list[UvicornProcess]:
        namespace = f"users{os.getpid()}-{next(_RUN)}"
        procs = []
        for index in range(count):
            env = {f"STABILIZER_{k.upper()}": str(v) for k, v in {**QUIET, **settings}.items()}
            env["STABILIZER_NODE_ID"] = f"replica-{index}"
            if count > 1:
                env.update(STABILIZER_REDIS_URL=redis_server.url,
                           STABILIZER_NAMESPACE=namespace)
            env.update(app_env or {})
            procs.append(UvicornProcess(app=APP, env=env))
        start_all(procs)
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop()


_OPENED: list[ClientConnection] = []


async def dial(url: str, **options: Any) -> ClientConnection:
    """Open a client socket that the test's teardown closes for sure (a socket still
    closing when the test's event loop ends warns later, in another test)."""
    ws = await connect(url, open_timeout=5, **options)
    _OPENED.append(ws)
    return ws


@pytest.fixture(autouse=True)
async def close_every_socket() -> AsyncIterator[None]:
    yield
    opened, _OPENED[:] = list(_OPENED), []
    for ws in opened:
        await ws.close()
        await ws.wait_closed()


def token(user: str, *, ttl: float = 600, key: str = SECRET, **claims: Any) -> str:
    now = time.time()
    body: dict[str, Any] = {"sub": user, "aud": AUDIENCE, "iss": ISSUER, "iat": int(now),
                            "exp": now + ttl, "info": {"name": user.title()}}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="HS256")


async def v2(server: UvicornProcess, **connect_fields: Any) -> ClientConnection:
    """Open a v2 socket and send its connect frame (nothing read yet)."""
    ws = await dial(f"{server.ws}/ws", subprotocols=[V2])
    assert ws.subprotocol == V2
    await ws.send(json.dumps({"type": "connect", **connect_fields}))
    return ws


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), raw
            value: dict[str, Any] = json.loads(raw)
            if value.get("type") != "ping":
                return value


async def welcomed(server: UvicornProcess, user: str, **fields: Any) -> tuple[
        ClientConnection, dict[str, Any]]:
    ws = await v2(server, token=token(user), **fields)
    session = await frame(ws)
    assert session["type"] == "session", session
    return ws, session


async def close_of(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str, list[Any]]:
    """Everything the server sends until it closes: (code, reason, frames before it)."""
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(await ws.recv())
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, "", frames
            return exc.rcvd.code, exc.rcvd.reason, frames


def assert_no_traceback(*procs: UvicornProcess) -> None:
    for proc in procs:
        log = proc.log()
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-3000:]}"


# ---------------------------------------------------------------- who may be whom


async def test_nobody_can_take_another_users_client_id(servers: Servers) -> None:
    (server,) = servers()
    plain = await dial(f"{server.ws}/ws")
    assert (await close_of(plain))[0] == CloseCode.AUTH_FAILED
    anonymous = await v2(server)
    assert (await close_of(anonymous))[0] == CloseCode.AUTH_FAILED
    bob, session = await welcomed(server, "bob", device="tab-1")
    assert (session["user_id"], session["client_id"], session["protocol"]) == (
        "bob", "bob/tab-1", 2)
    await bob.send(json.dumps({"type": "message", "data": "whoami"}))
    assert json.loads((await frame(bob))["data"]) == {"user_id": "bob",
                                                      "client_id": "bob/tab-1"}
    # a device id that tries to look like another user's client id is refused
    sneaky = await v2(server, token=token("bob"), device="alice/tab-1")
    assert (await close_of(sneaky))[0] == CloseCode.POLICY_VIOLATION
    header = await dial(f"{server.ws}/ws",
                        additional_headers={"Authorization": f"Bearer {token('carol')}"})
    welcome = json.loads(await header.recv())
    assert welcome["client_id"].startswith("carol/")
    await asyncio.gather(bob.close(), header.close())
    assert_no_traceback(server)


@pytest.mark.parametrize(("credential", "code"), [
    (lambda: token("ann", ttl=-30), CloseCode.AUTH_EXPIRED),
    (lambda: token("ann", nbf=time.time() + 600), CloseCode.AUTH_FAILED),
    (lambda: token("ann", aud="someone-else"), CloseCode.AUTH_FAILED),
    (lambda: token("ann", iss="elsewhere"), CloseCode.AUTH_FAILED),
    (lambda: token("ann", key="another-secret-of-at-least-32-chars!"), CloseCode.AUTH_FAILED),
    (lambda: token("ann")[:-4] + "AAAA", CloseCode.AUTH_FAILED),
    (lambda: _tampered(token("ann")), CloseCode.AUTH_FAILED),
    (lambda: "garbage", CloseCode.AUTH_FAILED),
    (lambda: "x" * 12000, CloseCode.AUTH_FAILED),
], ids=["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "unknown-key",
        "bad-signature", "tampered-payload", "garbage", "huge"])
async def test_bad_credentials_get_their_close_code_and_nothing_else(
    servers: Servers, credential: Callable[[], str], code: CloseCode,
) -> None:
    (server,) = servers()
    presented = credential()
    ws = await v2(server, token=presented)
    closed, reason, frames = await close_of(ws)
    assert closed == code
    assert frames == []
    assert presented[:20] not in reason
    assert_no_traceback(server)


def _tampered(token_text: str) -> str:
    import base64

    head, body, signature = token_text.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "root"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


@pytest.mark.parametrize(("first", "expected"), [
    (None, CloseCode.POLICY_VIOLATION),  # nothing within connect_timeout
    (b'{"type":"connect"}', CloseCode.POLICY_VIOLATION),  # binary
    ("not json", CloseCode.POLICY_VIOLATION),
    ('{"type":"message","data":"hi"}', CloseCode.POLICY_VIOLATION),
    ('{"type":"connect","token":42}', CloseCode.POLICY_VIOLATION),
    ('{"type":"connect","params":' + "[" * 3000 + "]" * 3000 + "}", CloseCode.POLICY_VIOLATION),
    ('{"type":"connect","params":{"pad":"' + "x" * 66000 + '"}}', CloseCode.MESSAGE_TOO_BIG),
    ('{"type":"connect","params":{"pad":"' + "x" * 900000 + '"}}', CloseCode.MESSAGE_TOO_BIG),
    ('{"type":"connect","token":"garbage"}', CloseCode.AUTH_FAILED),
], ids=["silent", "binary", "not-json", "message-first", "token-type", "deep", "huge",
        "huger-than-the-server-takes", "garbage-credentials"])
async def test_a_bad_or_missing_connect_frame_gets_a_close_code_and_nothing_else(
    servers: Servers, first: str | bytes | None, expected: CloseCode,
) -> None:
    (server,) = servers(connect_timeout=1, max_message_size=65536)
    ws = await dial(f"{server.ws}/ws", subprotocols=[V2], max_size=None)
    if first is not None:
        await ws.send(first)
    closed, _, frames = await close_of(ws)
    assert (closed, frames) == (expected, [])
    assert_no_traceback(server)


# ---------------------------------------------------------------- many connections, one user


async def test_three_tabs_on_three_replicas_all_receive_send_to_user(servers: Servers) -> None:
    procs = servers(3)
    opened = [await welcomed(proc, "ann", device=f"tab-{i}") for i, proc in enumerate(procs)]
    stranger, _ = await welcomed(procs[1], "bob")
    reached = await asyncio.to_thread(procs[0].post, "/admin/send_to_user/ann",
                                      {"message": {"note": "hi"}})
    assert reached == {"reached": 3}
    for ws, _ in opened:
        got = await frame(ws)
        assert got == {"type": "message", "data": '{"note":"hi"}'}
    listed = await asyncio.to_thread(procs[2].get, "/admin/users/ann")
    assert sorted((c["client_id"], c["node_id"]) for c in listed[1]) == [
        (f"ann/tab-{i}", f"replica-{i}") for i in range(3)]
    assert {json.dumps(c["info"]) for c in listed[1]} == {'{"name": "Ann"}'}
    await stranger.send(json.dumps({"type": "message", "data": "whoami"}))
    assert json.loads((await frame(stranger))["data"])["user_id"] == "bob"  # nothing else came
    for ws, _ in [*opened, (stranger, None)]:
        await ws.close()


async def test_disconnect_user_on_one_replica_closes_the_tabs_on_the_others(
    servers: Servers,
) -> None:
    procs = servers(3)
    opened = [await welcomed(proc, "ann") for proc in procs]
    bob, _ = await welcomed(procs[2], "bob")
    closed = await asyncio.to_thread(procs[0].post, "/admin/disconnect_user/ann",
                                     {"code": 4321, "reason": "banned"})
    assert closed == {"closed": 3}
    for ws, _ in opened:
        code, reason, _ = await close_of(ws)
        assert (code, reason) == (4321, "banned")
    await bob.send(json.dumps({"type": "message", "data": "still here"}))
    assert json.loads((await frame(bob))["data"]) == {"echo": "still here"}
    await bob.close()
    assert_no_traceback(*procs)


async def test_the_user_limit_holds_when_connects_race_across_replicas(
    servers: Servers,
) -> None:
    procs = servers(3, max_connections_per_user=2)

    admitted: list[ClientConnection] = []

    async def attempt(index: int) -> int | str:
        ws = await v2(procs[index % 3], token=token("ann"), device=f"d{index}")
        first = await frame(ws)
        admitted.append(ws)
        return "in" if first.get("type") == "session" else str(first)

    async def outcome(index: int) -> int | str:
        try:
            return await attempt(index)
        except ConnectionClosed as exc:
            if exc.rcvd is None or "retry_ms" not in json.loads(exc.rcvd.reason or "{}"):
                return f"closed without retry advice: {exc}"
            return exc.rcvd.code

    results = await asyncio.gather(*(outcome(i) for i in range(8)))
    await asyncio.gather(*(ws.close() for ws in admitted))
    assert sorted(map(str, results)) == ["4004"] * 6 + ["in"] * 2
    assert_no_traceback(*procs)


# ---------------------------------------------------------------- refresh


async def test_a_v2_client_that_refreshes_outlives_its_first_token(servers: Servers) -> None:
    (server,) = servers(auth_refresh_grace=1)
    ws = await v2(server, token=token("ann", ttl=2))
    session = await frame(ws)
    first_expiry = session["expires_at"]
    asked = await frame(ws)
    assert asked == {"type": "refresh", "expires_at": first_expiry}
    await ws.send(json.dumps({"type": "refresh", "token": token("ann", ttl=5)}))
    answer = await frame(ws)
    assert answer["type"] == "refreshed"
    assert answer["expires_at"] > first_expiry + 2
    again = await frame(ws, timeout=10)  # asked again, 1 s before the second expiry
    assert again["type"] == "refresh"
    assert again["expires_at"] - 1 > first_expiry + 1  # i.e. past the first close time
    await ws.send(json.dumps({"type": "message", "data": "alive"}))
    assert json.loads((await frame(ws))["data"]) == {"echo": "alive"}
    await ws.close()


@pytest.mark.parametrize(("answer", "code"), [
    (None, CloseCode.AUTH_EXPIRED),
    (lambda: token("mallory", ttl=60), CloseCode.AUTH_FAILED),
    (lambda: token("ann", ttl=-10), CloseCode.AUTH_EXPIRED),
    (lambda: "garbage", CloseCode.AUTH_FAILED),
], ids=["no-answer", "another-user", "expired", "garbage"])
async def test_a_v2_client_without_fresh_credentials_is_closed(
    servers: Servers, answer: Callable[[], str] | None, code: CloseCode,
) -> None:
    (server,) = servers(auth_refresh_grace=1)
    ws = await v2(server, token=token("ann", ttl=2))
    await frame(ws)  # session
    assert (await frame(ws))["type"] == "refresh"
    if answer is not None:
        await ws.send(json.dumps({"type": "refresh", "token": answer()}))
    closed, _, _ = await close_of(ws)
    assert closed == code
    assert_no_traceback(server)


# ---------------------------------------------------------------- both protocols, one server


async def test_a_v2_client_and_a_plain_client_share_a_server(servers: Servers) -> None:
    (server,) = servers()
    modern, _ = await welcomed(server, "ann")
    plain = await dial(f"{server.ws}/ws",
                       additional_headers={"Authorization": f"Bearer {token('bob')}"})
    assert json.loads(await plain.recv())["type"] == "session"
    await plain.send("all:hello both")
    assert await plain.recv() == "hello both"
    assert await frame(modern) == {"type": "message", "data": "hello both"}
    await modern.send(json.dumps({"type": "message", "data": '{"type":"ping"}'}))
    assert await frame(modern) == {"type": "message",
                                   "data": json.dumps({"echo": '{"type":"ping"}'},
                                                      separators=(",", ":"))}
    await modern.send(json.dumps({"type": "nonsense"}))
    assert (await frame(modern))["code"] == "unknown_type"
    await modern.send("not json")
    assert (await frame(modern))["code"] == "bad_frame"
    await asyncio.gather(modern.close(), plain.close())
    assert_no_traceback(server)


# ---------------------------------------------------------------- ops endpoints


async def test_the_ops_endpoints_are_guarded_and_health_is_not(servers: Servers) -> None:
    (server,) = servers()
    status, _ = await asyncio.to_thread(server.get, "/health")
    assert status == 200
    status, _ = await asyncio.to_thread(server.get, "/stats")
    assert status == 403
    status, body = await asyncio.to_thread(
        lambda: server.request("GET", "/stats", headers={"X-Operator": "yes"}))
    assert status == 200
    assert body["node_id"] == "replica-0"


# ---------------------------------------------------------------- keys served as a JWKS


async def test_a_key_rotated_into_the_jwks_is_accepted_by_a_running_server(
    servers: Servers,
) -> None:
    jwks = JWKSServer()
    old, new = Key(), Key()
    try:
        jwks.publish(old)
        (server,) = servers(app_env={"USERS_APP_JWKS_URL": jwks.url})
        claims = {"aud": AUDIENCE, "iss": ISSUER}
        first = await v2(server, token=old.token("ann", **claims))
        assert (await frame(first))["user_id"] == "ann"
        early = await v2(server, token=new.token("bob", **claims))  # not published yet
        assert (await close_of(early))[0] == CloseCode.AUTH_FAILED
        await early.close()
        jwks.publish(old, new)  # the issuer rotates a key in
        refused_meanwhile = 0
        async with asyncio.timeout(10):
            while True:  # the server refetches at most every jwks_refetch_interval (0.05 s)
                second = await v2(server, token=new.token("bob", **claims))
                try:
                    welcome = await frame(second)
                    break
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    if code != CloseCode.AUTH_FAILED:
                        raise
                    refused_meanwhile += 1
                    await asyncio.sleep(0.05)  # bounded poll of a clock-driven rate limit
        assert welcome["user_id"] == "bob"
        assert refused_meanwhile <= 1, "refused for longer than one refetch interval"
        await asyncio.gather(first.close(), second.close())
        assert_no_traceback(server)
    finally:
        jwks.close()


# ---------------------------------------------------------------- heartbeats on v2


async def test_a_v2_client_gets_real_pings_and_its_pongs_count(servers: Servers) -> None:
    """Pings are control frames for v2 clients too, never wrapped as application
    messages (the heartbeat built its ping like an application's JSON message, so a v2
    client got {"type":"message","data":"{\\"type\\":\\"ping\\"..."} and never answered)."""
    (server,) = servers(heartbeat_interval=0.2, heartbeat_timeout=3600)
    ws, _ = await welcomed(server, "ann")
    async with asyncio.timeout(10):
        raw = await ws.recv()
    first = json.loads(raw)
    assert first["type"] == "ping", first
    await ws.send(json.dumps({"type": "pong"}))
    async with asyncio.timeout(10):
        while (await asyncio.to_thread(server.get, "/admin/pongs"))[1]["pongs"] < 1:
            await asyncio.sleep(0.05)  # bounded poll of a counter
    await ws.close()
