"""stabilizer.client speaking protocol v2 (docs/protocol.md, section 6): against real
uvicorn serving tests/e2e/v2_app.py (JWT users), and against a scripted v2 server for the
exact frames on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from stabilizer import CloseCode
from stabilizer.auth import JWTAuthenticator
from stabilizer.client import (
    ConnectionState,
    HandshakeRejectedError,
    ResumeResult,
    RetryPolicy,
    ServerClosedError,
    StateChange,
    connect,
    retry_advice_seconds,
)
from tests.e2e.conftest import V2_SECRET
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

SECRET = V2_SECRET
JWT = JWTAuthenticator(secret=SECRET)
QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
FAST = RetryPolicy(base=0.05, cap=0.3)
OPEN, RECONNECTING, CLOSED = (ConnectionState.OPEN, ConnectionState.RECONNECTING,
                              ConnectionState.CLOSED)
V2Launcher = Callable[..., UvicornProcess]


@pytest.fixture
def launch_v2() -> Iterator[V2Launcher]:
    """Start tests/e2e/v2_app.py under uvicorn with STABILIZER_* settings."""
    started: list[UvicornProcess] = []

    def start(**settings: object) -> UvicornProcess:
        env = {"V2_APP_JWT_SECRET": SECRET,
               **{f"STABILIZER_{key.upper()}": str(value) for key, value in settings.items()}}
        proc = UvicornProcess(app="tests.e2e.v2_app:app", env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class Tokens:
    """A get_token for user `user_id` that counts its calls; `script` may replace a call's
    token (by call number, from 1) with another value or an exception."""

    def __init__(self, user_id: str = "alice", ttl: float = 3600.0,
                 script: dict[int, object] | None = None) -> None:
        self.user_id, self.ttl, self.script = user_id, ttl, script or {}
        self.calls = 0
        self.called = asyncio.Event()

    def __call__(self) -> str | None:
        self.calls += 1
        self.called.set()
        scripted = self.script.get(self.calls, ...)
        if isinstance(scripted, Exception):
            raise scripted
        if scripted is not ...:
            return scripted  # type: ignore[return-value]  # a deliberately odd value
        return JWT.issue(self.user_id, ttl=self.ttl)


class Recorder:
    """What a client reports through its callbacks, for tests to await."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.frames: list[dict[str, Any]] = []
        self.resumes: list[ResumeResult] = []
        self._states: asyncio.Queue[StateChange] = asyncio.Queue()
        self._frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def options(self) -> dict[str, Any]:
        return {"on_state": self._on_state, "on_control": self._on_frame,
                "on_resume": self.resumes.append}

    def _on_state(self, change: StateChange) -> None:
        self.changes.append(change)
        self._states.put_nowait(change)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self._frames.put_nowait(frame)

    async def until(self, state: ConnectionState, timeout: float = 15.0) -> StateChange:
        """The next change into `state`."""
        async with asyncio.timeout(timeout):
            while (change := await self._states.get()).state is not state:
                pass
        return change

    async def frame(self, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next control frame of type `kind`."""
        async with asyncio.timeout(timeout):
            while (frame := await self._frames.get())["type"] != kind:
                pass
        return frame

    def states(self) -> list[ConnectionState]:
        return [change.state for change in self.changes]


async def recv(conn: Any, timeout: float = 5.0) -> str | bytes:
    async with asyncio.timeout(timeout):
        message: str | bytes = await conn.recv()
        return message


# ---------------------------------------------------------------- real uvicorn, JWT users


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_get_token_opens_a_session_with_user_and_device(
    launch_v2: V2Launcher, flavour: str
) -> None:
    server = launch_v2(**QUIET)
    tokens = Tokens()

    async def fetch() -> str:  # as an application would: ask its own backend for a token
        tokens.calls += 1
        reply = await asyncio.to_thread(server.post, "/admin/token/alice")
        return str(reply["token"])

    get_token = tokens if flavour == "sync" else fetch
    async with connect(f"{server.ws}/ws", protocol=2, get_token=get_token) as conn:
        session = conn.session
        assert session is not None
        assert (conn.protocol, session.protocol, conn.user_id) == (2, 2, "alice")
        assert conn.device is not None
        assert conn.device == session.device
        assert conn.client_id == f"alice/{conn.device}"
        assert conn.expires_at is not None
        assert conn.expires_at == session.expires_at
        await conn.send("hello")
        assert await recv(conn) == f"alice/{conn.device}: hello"  # wrapped out and back
        await conn.send(b"\x00\xff")
        assert await recv(conn) == b"\x00\xff"
        # JSON that a plain client would take for a control frame is just a message in v2
        looks_like_control = {"type": "session", "client_id": "mallory"}
        reached = await asyncio.to_thread(server.post, "/admin/send_user/alice",
                                          {"message": looks_like_control})
        assert reached == {"reached": 1}
        assert json.loads(await recv(conn)) == looks_like_control
        assert conn.session is session  # no second session frame was invented
        users = (await asyncio.to_thread(server.get, "/admin/users/alice"))[1]
        assert users == [conn.client_id]
    assert tokens.calls == 1


async def test_a_server_close_reconnects_with_a_new_token_and_resumes(
    launch_v2: V2Launcher,
) -> None:
    server = launch_v2(**QUIET)
    tokens = Tokens()
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=tokens, retry=FAST,
                       **watch.options()) as conn:
        first = conn.session
        assert first is not None
        assert first.resumed is False
        device, client_id = conn.device, conn.client_id
        closed = await asyncio.to_thread(
            server.post, f"/admin/disconnect_user/alice?code={CloseCode.MEMORY_EVICTED}")
        assert closed == {"closed": 1}
        lost = await watch.until(RECONNECTING)
        assert lost.close_code == CloseCode.MEMORY_EVICTED
        await watch.until(OPEN)
        assert tokens.calls == 2  # fresh credentials for the new socket
        assert conn.session is not None
        assert conn.session.resumed is True  # the reconnect token, in the connect frame
        assert conn.session.conn_id != first.conn_id
        assert (conn.device, conn.client_id) == (device, client_id)
        await conn.send("back")
        assert await recv(conn) == f"{client_id}: back"
    assert watch.resumes == [ResumeResult(recovered=False, session_resumed=True)]


async def test_refresh_keeps_the_connection_open_past_the_first_expiry(
    launch_v2: V2Launcher,
) -> None:
    grace = 1.0
    server = launch_v2(auth_refresh_grace=grace, **QUIET)
    tokens = Tokens(ttl=3.0)
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=tokens,
                       **watch.options()) as conn:
        assert conn.session is not None
        conn_id, first_expiry = conn.session.conn_id, conn.expires_at
        assert first_expiry is not None
        deadline = first_expiry + grace  # unrefreshed, the server closes (4003) then
        # the server asks `grace` before each expiry: a request for an expiry later than
        # deadline + grace was made, by the server's clock, after the first deadline
        while (await watch.frame("refresh", timeout=10.0))["expires_at"] - grace <= deadline:
            pass
        await watch.frame("refreshed")  # the answer to that last request
        refreshed = [f for f in watch.frames if f["type"] == "refreshed"]
        assert tokens.calls == 1 + len(refreshed)
        assert refreshed[-1]["expires_at"] > first_expiry
        assert conn.state is OPEN
        assert conn.session.conn_id == conn_id  # the same socket all along
        assert conn.expires_at is not None
        assert conn.expires_at > first_expiry
        await conn.send("still here")
        assert await recv(conn) == f"{conn.client_id}: still here"
    assert RECONNECTING not in watch.states()


async def test_unanswered_refresh_closes_4003_and_the_client_reconnects(
    launch_v2: V2Launcher,
) -> None:
    server = launch_v2(auth_refresh_grace=1.0, **QUIET)
    # the refresh gets no token; the reconnect's token lasts (no refresh after it)
    tokens = Tokens(ttl=2.0, script={2: None, 3: JWT.issue("alice", ttl=3600)})
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=tokens, retry=FAST,
                       **watch.options()) as conn:
        device = conn.device
        lost = await watch.until(RECONNECTING)
        assert lost.close_code == CloseCode.AUTH_EXPIRED
        await watch.until(OPEN)
        assert tokens.calls == 3  # connect, refresh (no token), reconnect
        assert conn.session is not None
        assert conn.session.resumed is True
        assert conn.device == device


@pytest.mark.parametrize("bad", ["not-a-jwt", "other-user"])
async def test_a_refused_refresh_closes_4505_and_ends_the_client(
    launch_v2: V2Launcher, bad: str
) -> None:
    server = launch_v2(auth_refresh_grace=1.0, **QUIET)
    other = JWT.issue("mallory", ttl=3600) if bad == "other-user" else bad
    tokens = Tokens(ttl=2.0, script={2: other})
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=tokens, retry=FAST,
                       **watch.options()) as conn:
        with pytest.raises(ServerClosedError) as raised:
            await recv(conn, timeout=10.0)
        assert raised.value.code == CloseCode.AUTH_FAILED
        with pytest.raises(ServerClosedError):
            await conn.send("after the end")
    assert tokens.calls == 2  # no reconnect after a final code
    assert watch.states() == [ConnectionState.CONNECTING, OPEN, CLOSED]
    assert isinstance(watch.changes[-1].error, ServerClosedError)


async def test_refused_credentials_at_connect_are_final(launch_v2: V2Launcher) -> None:
    server = launch_v2(**QUIET)
    tokens = Tokens(script={1: "forged"})
    with pytest.raises(ServerClosedError) as raised:
        await connect(f"{server.ws}/ws", protocol=2, get_token=tokens, retry=FAST).start()
    assert raised.value.code == CloseCode.AUTH_FAILED
    assert tokens.calls == 1


async def test_a_failing_get_token_fails_the_attempt_and_the_next_one_asks_again(
    launch_v2: V2Launcher,
) -> None:
    server = launch_v2(**QUIET)
    tokens = Tokens(script={1: ConnectionError("auth server down")})
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=tokens, retry=FAST,
                       **watch.options()) as conn:
        assert conn.user_id == "alice"
    assert tokens.calls == 2
    failed = [c for c in watch.changes if c.close_reason.startswith("get_token failed")]
    assert len(failed) == 1
    assert "auth server down" in failed[0].close_reason


async def test_the_user_limit_is_retried_after_the_advice(launch_v2: V2Launcher) -> None:
    server = launch_v2(max_connections_per_user=1, retry_jitter=0.2, **QUIET)
    watch = Recorder()
    async with connect(f"{server.ws}/ws", protocol=2, get_token=Tokens(),
                       device="laptop") as laptop:
        phone = connect(f"{server.ws}/ws", protocol=2, get_token=Tokens(), device="phone",
                        retry=FAST, **watch.options())
        starting = asyncio.create_task(phone.start())
        try:
            refused = await watch.until(ConnectionState.CONNECTING)
            while refused.close_code is None:  # skip the initial CONNECTING
                refused = await watch.until(ConnectionState.CONNECTING)
            assert refused.close_code == CloseCode.USER_LIMIT
            advice = retry_advice_seconds(refused.close_reason)
            assert advice is not None
            assert refused.delay == advice  # the server's advice, not the backoff
            await laptop.aclose()
            async with asyncio.timeout(10):
                await starting
            assert phone.client_id == "alice/phone"
        finally:
            await phone.aclose()


async def test_a_v2_client_fails_clearly_against_a_plain_endpoint(
    launch_v2: V2Launcher,
) -> None:
    server = launch_v2(**QUIET)
    tokens = Tokens()
    watch = Recorder()
    with pytest.raises(HandshakeRejectedError, match="does not speak stabilizer protocol v2"):
        await connect(f"{server.ws}/plain", protocol=2, get_token=tokens, retry=FAST,
                      **watch.options()).start()
    assert [c.state for c in watch.changes] == [ConnectionState.CONNECTING, CLOSED]


# ---------------------------------------------------------------- a scripted v2 server

Script = Callable[[ServerConnection], Awaitable[None]]


class ScriptedV2:
    """Speaks stabilizer.v2 by hand: one script per connection, in order."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.paths: list[str] = []
        self.url = ""

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        await self.scripts[len(self.paths) - 1](ws)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedV2]:
        async with serve(self._handle, "127.0.0.1", 0,
                         subprotocols=[Subprotocol("stabilizer.v2")]) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            yield self


async def frame_of(ws: ServerConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        value = json.loads(await ws.recv())
    assert isinstance(value, dict)
    return value


def session(token: str, device: str, *, resumed: bool = False, history: bool = True) -> str:
    return json.dumps({"type": "session", "protocol": 2, "client_id": f"alice/{device}",
                       "device": device, "user_id": "alice", "conn_id": token,
                       "node_id": "scripted", "resumed": resumed, "token": token,
                       "heartbeat_interval": 30.0, "history": history,
                       "expires_at": 1795482348.0})


def sequenced(offset: int, data: str) -> str:
    return json.dumps({"type": "message", "stream": "all", "offset": offset, "epoch": "e1",
                       "data": data})


async def test_credentials_travel_in_the_connect_frame_never_in_the_url() -> None:
    connects: list[dict[str, Any]] = []
    received: list[Any] = []

    async def first(ws: ServerConnection) -> None:
        connects.append(await frame_of(ws))
        await ws.send(session("r1", "srv-dev"))
        await ws.send(json.dumps({"type": "ping", "timestamp": 1.0}))
        received.append(await frame_of(ws))  # the pong
        await ws.send(json.dumps({"type": "novelty", "x": 1}))  # a later server's frame
        await ws.send("not json")  # no v2 server sends this: dropped
        for offset, data in ((1, "one"), (2, "two"), (2, "two again")):
            await ws.send(sequenced(offset, data))
        received.append(await frame_of(ws))  # the application's text, wrapped
        await ws.close(CloseCode.SERVICE_RESTART, '{"retry_ms":1}')

    async def second(ws: ServerConnection) -> None:
        connects.append(await frame_of(ws))
        await ws.close(CloseCode.INVALID_TOKEN, "token already used")

    async def third(ws: ServerConnection) -> None:
        connects.append(await frame_of(ws))
        await ws.send(session("r3", "srv-dev"))
        await ws.send(sequenced(3, "three"))
        await ws.wait_closed()

    tokens = Tokens()
    watch = Recorder()
    async with ScriptedV2(first, second, third).running() as fake, connect(
            f"{fake.url}/ws?room=1&token=leak", protocol=2, get_token=tokens,
            params={"tenant": "acme"}, **watch.options()) as conn:
        assert [await recv(conn) for _ in range(2)] == ["one", "two"]
        await conn.send("hi")
        assert await recv(conn) == "three"
        assert conn.device == "srv-dev"  # the server's choice, kept for the reconnects
    assert fake.paths == ["/ws?room=1"] * 3  # credentials never in the URL
    assert received == [{"type": "pong"}, {"type": "message", "data": "hi"}]
    first_connect, resuming, fresh = connects
    assert set(first_connect) == {"type", "token", "params"}
    assert first_connect["params"] == {"tenant": "acme"}
    assert resuming["device"] == fresh["device"] == "srv-dev"
    assert resuming["reconnect_token"] == "r1"
    assert resuming["positions"] == {"all": [2, "e1"]}
    assert "reconnect_token" not in fresh  # 4501: once more without it, a fresh session
    assert "positions" not in fresh
    assert tokens.calls == 3
    assert [f["type"] for f in watch.frames] == ["session", "ping", "novelty", "session"]
