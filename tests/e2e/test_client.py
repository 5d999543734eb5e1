"""stabilizer.client against real uvicorn (one node, replicas on Redis) and a scripted fake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection, serve

from stabilizer import CloseCode
from stabilizer.client import (
    ClientClosedError,
    ConnectionState,
    ResumeResult,
    RetriesExhaustedError,
    RetryPolicy,
    SendTimeoutError,
    ServerClosedError,
    StateChange,
    connect,
    retry_advice_seconds,
)
from tests.e2e.conftest import Launcher, Replicas
from tests.support.clients import closed_with, open_client, recv_json
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
SECRET = "client-e2e-secret-" + "k" * 20
FAST = RetryPolicy(base=0.05, cap=0.3)
CONNECTING, OPEN = ConnectionState.CONNECTING, ConnectionState.OPEN
RECONNECTING, CLOSED = ConnectionState.RECONNECTING, ConnectionState.CLOSED


class Watch:
    """Collects what a client reports through its callbacks, for tests to await in order."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.controls: list[str] = []
        self.resumes: list[ResumeResult] = []
        self._states: asyncio.Queue[StateChange] = asyncio.Queue()
        self._control_queue: asyncio.Queue[str] = asyncio.Queue()

    def options(self) -> dict[str, Any]:
        """Keyword arguments for connect()."""
        return {"on_state": self._on_state, "on_control": self._on_control,
                "on_resume": self.resumes.append}

    def _on_state(self, change: StateChange) -> None:
        self.changes.append(change)
        self._states.put_nowait(change)

    def _on_control(self, frame: dict[str, Any]) -> None:
        self.controls.append(frame["type"])
        self._control_queue.put_nowait(frame["type"])

    async def until(self, state: ConnectionState, timeout: float = 15.0) -> StateChange:
        """The next reported change into `state` (earlier ones are consumed)."""
        async with asyncio.timeout(timeout):
            while (change := await self._states.get()).state is not state:
                pass
        return change

    async def control(self, kind: str, timeout: float = 5.0) -> None:
        """Wait for the next control frame of `kind`."""
        async with asyncio.timeout(timeout):
            while await self._control_queue.get() != kind:
                pass

    def path(self) -> list[ConnectionState]:
        """The states in order, repeated retries collapsed."""
        return [state for state, _ in itertools.groupby(c.state for c in self.changes)]


async def recv(conn: Any, timeout: float = 5.0) -> str | bytes:
    async with asyncio.timeout(timeout):
        message: str | bytes = await conn.recv()
        return message


# ---------------------------------------------------------------- one uvicorn, embedded backend

async def test_messages_flow_and_control_frames_stay_hidden(launch: Launcher) -> None:
    server = launch(**QUIET)
    watch = Watch()
    bob, _ = await open_client(f"{server.ws}/ws/bob")
    try:
        async with connect(f"{server.ws}/ws/alice", client_id="alice",
                           **watch.options()) as alice:
            assert alice.state is OPEN
            assert alice.session is not None
            assert alice.session.client_id == "alice"
            assert alice.node_id == (await asyncio.to_thread(server.get, "/health"))[1][
                "node_id"]
            await alice.send("hi bob")
            assert await recv_json(bob) == {"from": "alice", "text": "hi bob"}
            await bob.send("hi alice")
            assert json.loads(await recv(alice)) == {"from": "bob", "text": "hi alice"}
            await alice.send("echo:me")
            assert await recv(alice) == "echo:me"
            await asyncio.to_thread(server.post, "/admin/send/alice",
                                    {"message": {"type": "note", "n": 1}})
            assert json.loads(await recv(alice)) == {"type": "note", "n": 1}
        assert watch.controls == ["session"]
        assert watch.path() == [CONNECTING, OPEN, CLOSED]
        assert [m async for m in alice] == []  # closed by the application: iteration ends
        with pytest.raises(ClientClosedError):
            await alice.send("too late")
    finally:
        await bob.close()


async def test_pings_are_answered_while_a_silent_client_is_evicted(launch: Launcher) -> None:
    # pinged every 0.2 s; 3 s to answer, so a loaded machine never fails the polite client
    server = launch(heartbeat_interval=0.2, heartbeat_timeout=3.0)
    watch = Watch()
    async with connect(f"{server.ws}/ws/polite", **watch.options()) as polite:
        silent = await raw_connect(f"{server.ws}/ws/silent")  # reads, never answers
        assert await closed_with(silent) == CloseCode.HEARTBEAT_TIMEOUT
        # polite connected first: unanswered, its deadline would have come before silent's
        for _ in range(8):
            await watch.control("ping")
        await asyncio.to_thread(server.post, "/admin/send/polite", {"message": "still here"})
        assert await recv(polite) == "still here"
        assert polite.state is OPEN
    assert watch.path() == [CONNECTING, OPEN, CLOSED]
    stats = (await asyncio.to_thread(server.get, "/stats"))[1]
    assert stats["counters"]["heartbeat_timeouts"] == 1
    assert stats["counters"]["pongs"] >= 8


async def test_a_restarted_replica_is_rejoined_with_the_token(launch: Launcher) -> None:
    server = launch(token_secret=SECRET, retry_jitter=0.3, **QUIET)
    replacement = UvicornProcess(env=server.env, port=server.port)
    watch = Watch()
    try:
        async with connect(f"{server.ws}/ws/{{client_id}}?v=1", client_id="alice", retry=FAST,
                           **watch.options()) as conn:
            assert conn.session is not None
            assert conn.session.resumed is False
            first_token = conn.token
            report = await asyncio.to_thread(server.post, "/admin/shutdown?restart=true")
            assert report["close_code"] == CloseCode.SERVICE_RESTART
            lost = await watch.until(RECONNECTING)
            assert lost.close_code == CloseCode.SERVICE_RESTART
            advice = retry_advice_seconds(lost.close_reason)
            assert advice is not None
            assert 0.25 <= advice <= 0.55
            assert lost.delay == advice  # the server's advice, not the client's backoff
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(replacement.start)  # same port, a new process
            back = await watch.until(OPEN)
            assert back.url == f"{server.ws}/ws/alice?v=1"
            assert conn.session.resumed is True
            assert conn.token not in (None, first_token)
            await asyncio.to_thread(replacement.post, "/admin/send/alice",
                                    {"message": "after restart"})
            assert await recv(conn) == "after restart"
            await conn.send("echo:and back")
            assert await recv(conn) == "echo:and back"
        assert watch.path() == [CONNECTING, OPEN, RECONNECTING, OPEN, CLOSED]
        assert watch.resumes == [ResumeResult(recovered=False, session_resumed=True)]
    finally:
        await asyncio.to_thread(replacement.stop)


async def test_a_refused_token_falls_back_to_one_fresh_session(launch: Launcher) -> None:
    server = launch(token_secret=SECRET, **QUIET)
    watch = Watch()
    async with connect(f"{server.ws}/ws/alice", token="s1.forged", retry=FAST,
                       **watch.options()) as conn:
        assert conn.session is not None
        assert conn.session.resumed is False
        assert conn.token not in (None, "s1.forged")
    refused = [c for c in watch.changes if c.close_code is not None and c.state is CONNECTING]
    assert [(c.close_code, c.delay) for c in refused] == [(CloseCode.INVALID_TOKEN, 0.0)]


async def test_try_again_later_waits_for_the_advice(launch: Launcher) -> None:
    server = launch(max_connections=1, retry_jitter=0.2, **QUIET)
    holder, _ = await open_client(f"{server.ws}/ws/holder")
    watch = Watch()
    client = connect(f"{server.ws}/ws/late", retry=FAST, **watch.options())
    starting = asyncio.create_task(client.start())
    try:
        refused = await watch.until(CONNECTING)
        while refused.close_code is None:  # skip the initial CONNECTING
            refused = await watch.until(CONNECTING)
        assert refused.close_code == CloseCode.TRY_AGAIN_LATER
        assert refused.delay == retry_advice_seconds(refused.close_reason)
        await holder.close()
        async with asyncio.timeout(10):
            await starting
        assert client.state is OPEN
    finally:
        await client.aclose()


# ---------------------------------------------------------------- codes that forbid retrying

@pytest.fixture(scope="module")
def refuser() -> Iterator[UvicornProcess]:
    """tests/e2e/client_app.py: closes every socket with the code in its path."""
    with UvicornProcess(app="tests.e2e.client_app:app") as proc:
        yield proc


async def attempts(proc: UvicornProcess, code: int) -> int:
    counts = (await asyncio.to_thread(proc.get, "/attempts"))[1]
    return int(counts.get(str(code), 0))


@pytest.mark.parametrize("code", [CloseCode.POLICY_VIOLATION, CloseCode.REPLACED])
async def test_a_final_code_raises_after_exactly_one_attempt(
    refuser: UvicornProcess, code: int
) -> None:
    watch = Watch()
    with pytest.raises(ServerClosedError) as raised:
        async with connect(f"{refuser.ws}/close/{code}?reason=go+away", retry=FAST,
                           **watch.options()):
            pytest.fail("a refused connection must not open")
    assert (raised.value.code, raised.value.reason) == (code, "go away")
    assert await attempts(refuser, code) == 1
    assert watch.path() == [CONNECTING, CLOSED]
    assert watch.changes[-1].error is not None


async def test_a_final_close_of_an_open_connection_ends_recv_and_send(
    refuser: UvicornProcess,
) -> None:
    async with connect(f"{refuser.ws}/close/1000?welcome=true", retry=FAST) as conn:
        assert conn.node_id == "client-app"
        with pytest.raises(ServerClosedError) as raised:
            await recv(conn)
        assert raised.value.code == CloseCode.NORMAL
        with pytest.raises(ServerClosedError):
            await conn.send("nobody listens")
        with pytest.raises(ServerClosedError):
            _ = [m async for m in conn]
    assert await attempts(refuser, 1000) == 1


async def test_retries_stop_after_max_attempts(refuser: UvicornProcess) -> None:
    watch = Watch()
    policy = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    with pytest.raises(RetriesExhaustedError) as raised:
        await connect(f"{refuser.ws}/close/1013?reason=%7B%22retry_ms%22%3A20%7D",
                      retry=policy, **watch.options()).start()
    assert raised.value.code == CloseCode.TRY_AGAIN_LATER
    assert await attempts(refuser, 1013) == 3
    first, second, last = [c.delay for c in watch.changes if c.close_code]
    assert (first, last) == (0.02, 0.0)
    # the advised attempt failed too: the longer of advice and backoff (at most 0.01 * 2**2)
    assert 0.02 <= second <= 0.04


# ---------------------------------------------------------------- replicas on Redis



@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_a_client_fails_over_to_another_replica(replicas: Replicas, sig: int) -> None:
    a, b = replicas(2)
    watch = Watch()
    async with connect([f"{a.ws}/ws/alice", f"{b.ws}/ws/alice"], client_id="alice",
                       retry=FAST, **watch.options()) as alice:
        assert alice.node_id == "replica-0"
        await asyncio.to_thread(a.stop, sig=sig)
        lost = await watch.until(RECONNECTING)
        # SIGTERM: uvicorn itself closes open sockets with 1012 before the app's lifespan
        # shutdown could send 1001 (see the report); either way the client must move on
        expected = {1006} if sig == signal.SIGKILL else {CloseCode.GOING_AWAY,
                                                         CloseCode.SERVICE_RESTART}
        assert lost.close_code in expected
        back = await watch.until(OPEN)
        assert back.url == f"{b.ws}/ws/alice"
        assert alice.node_id == "replica-1"
        assert alice.session is not None
        assert alice.session.resumed is True
        sent = await asyncio.to_thread(b.post, "/admin/send/alice", {"message": "on B"})
        assert sent["sent"] is True
        assert await recv(alice) == "on B"
    assert watch.path() == [CONNECTING, OPEN, RECONNECTING, OPEN, CLOSED]


@pytest.mark.redis
async def test_a_redis_restart_does_not_break_clients(replicas: Replicas) -> None:
    with RedisServer() as redis:
        a, b = replicas(2, redis_url=redis.url, node_ttl=1, op_timeout=0.5)
        alice_watch, bob_watch = Watch(), Watch()
        async with connect(f"{a.ws}/ws/alice", retry=FAST, **alice_watch.options()) as alice, \
                connect(f"{b.ws}/ws/bob", retry=FAST, **bob_watch.options()) as bob:
            stop = asyncio.Event()
            sent = [0]

            async def chatter() -> None:
                while not stop.is_set():
                    await alice.send(f"tick {sent[0]}")
                    sent[0] += 1
                    await asyncio.sleep(0.02)  # pacing the traffic, not synchronising

            async def heard_after(mark: int) -> None:
                async with asyncio.timeout(20):
                    while int(json.loads(await bob.recv())["text"].split()[1]) <= mark:
                        pass

            traffic = asyncio.create_task(chatter())
            try:
                await heard_after(-1)
                await asyncio.to_thread(redis.stop, kill=True)
                await asyncio.to_thread(redis.start)  # back, and empty
                await heard_after(sent[0])  # cross-replica delivery resumes
            finally:
                stop.set()
                await traffic
            assert alice.state is OPEN
            assert bob.state is OPEN
        for watch in (alice_watch, bob_watch):
            assert watch.changes[-1].error is None  # closed by us, not by the outage


# ---------------------------------------------------------------- a scripted fake server

Script = Callable[[ServerConnection], Awaitable[None]]


class FakeServer:
    """Runs one script per connection, in order; records each request's path and query."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.paths: list[str] = []
        self.url = ""

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        await self.scripts[len(self.paths) - 1](ws)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeServer]:
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            yield self

    def query(self, index: int) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.paths[index]).query)


def session_frame(token: str, *, resumed: bool = False, history: bool = True) -> str:
    return json.dumps({"type": "session", "client_id": "alice", "conn_id": token,
                       "node_id": "fake", "resumed": resumed, "token": token,
                       "heartbeat_interval": 30.0, "history": history})


def wrapped(stream: str, offset: int, epoch: str, data: str | bytes) -> str:
    frame: dict[str, object] = {"type": "message", "stream": stream, "offset": offset,
                                "epoch": epoch}
    if isinstance(data, bytes):
        frame["data_b64"] = base64.b64encode(data).decode()
    else:
        frame["data"] = data
    return json.dumps(frame)


async def test_history_is_unwrapped_deduplicated_and_resumed_with_positions() -> None:
    pongs: list[str | bytes] = []

    async def first(ws: ServerConnection) -> None:
        await ws.send(session_frame("t1"))
        await ws.send(json.dumps({"type": "ping", "timestamp": 1.0}))
        pongs.append(await ws.recv())
        for frame in (wrapped("all", 1, "e1", "a"), wrapped("all", 2, "e1", b"\x00\xff"),
                      wrapped("all", 2, "e1", "duplicate"), wrapped("c:alice", 1, "e1", "d"),
                      wrapped("all", 0, "e1", "older")):
            await ws.send(frame)
        await ws.close(CloseCode.SERVICE_RESTART, '{"retry_ms":1}')

    async def second(ws: ServerConnection) -> None:
        await ws.send(session_frame("t2", resumed=True))
        for frame in (wrapped("all", 2, "e1", "replayed twice"), wrapped("all", 3, "e1", "b"),
                      json.dumps({"type": "resume", "recovered": False, "replayed": 2,
                                  "failed": ["c:alice"]}),
                      wrapped("c:alice", 1, "e2", '{"type":"ping"}')):
            await ws.send(frame)
        await ws.wait_closed()

    watch = Watch()
    async with FakeServer(first, second).running() as fake, connect(
            f"{fake.url}/ws/alice?v=2", client_id="alice", **watch.options()) as conn:
        got = [await recv(conn) for _ in range(5)]
        assert got == ["a", b"\x00\xff", "d", "b", '{"type":"ping"}']  # the app's own JSON
        assert pongs == ["pong"]
        assert fake.paths[0] == "/ws/alice?v=2"
        query = fake.query(1)
        assert (query["v"], query["token"]) == (["2"], ["t1"])
        assert json.loads(query["positions"][0]) == {"all": [2, "e1"], "c:alice": [1, "e1"]}
        assert conn.last_resume == ResumeResult(recovered=False, replayed=2,
                                                failed=("c:alice",))
        assert watch.resumes == [conn.last_resume]
        assert conn.positions == {"all": (3, "e1"), "c:alice": (1, "e2")}
        assert conn.token == "t2"
        assert watch.controls == ["session", "ping", "session", "resume"]
        restart = [c for c in watch.changes if c.state is RECONNECTING]
        assert [(c.close_code, c.delay) for c in restart] == [(1012, 0.001)]


async def test_send_waits_while_reconnecting_and_fails_clearly() -> None:
    received: list[str | bytes] = []

    async def first(ws: ServerConnection) -> None:
        await ws.send(session_frame("t1", history=False))
        await ws.close(CloseCode.TRY_AGAIN_LATER, '{"retry_ms":300}')

    async def second(ws: ServerConnection) -> None:
        await ws.send(session_frame("t2", resumed=True, history=False))
        received.append(await ws.recv())
        await ws.send("ack")
        await ws.wait_closed()

    watch = Watch()
    async with FakeServer(first, second).running() as fake:
        async with connect(f"{fake.url}/ws/alice", **watch.options()) as conn:
            waiting = await watch.until(RECONNECTING)
            assert waiting.delay == 0.3
            with pytest.raises(SendTimeoutError):
                await conn.send("never sent", timeout=0.05)
            await conn.send("sent after the reconnect", timeout=5)
            assert await recv(conn) == "ack"
        assert received == ["sent after the reconnect"]
        assert "token=t1" in fake.paths[1]
        assert "positions" not in fake.paths[1]  # nothing recorded without history
        assert [m async for m in conn] == []


async def test_an_expired_token_is_dropped_once_then_a_final_code_ends() -> None:
    async def first(ws: ServerConnection) -> None:
        await ws.send(session_frame("t1"))
        await ws.send(wrapped("all", 1, "e1", "x"))
        await ws.close(CloseCode.HEARTBEAT_TIMEOUT)

    async def second(ws: ServerConnection) -> None:
        await ws.close(CloseCode.TOKEN_EXPIRED, "token expired 5s ago")

    async def third(ws: ServerConnection) -> None:
        await ws.send(session_frame("t3"))
        await ws.send(wrapped("all", 9, "e7", "fresh"))
        await ws.close(CloseCode.REPLACED, "replaced")

    watch = Watch()
    async with FakeServer(first, second, third).running() as fake, connect(
            f"{fake.url}/ws/alice", retry=RetryPolicy(base=0.01, cap=0.01),
            **watch.options()) as conn:
        assert await recv(conn) == "x"
        assert await recv(conn) == "fresh"
        with pytest.raises(ServerClosedError) as raised:
            await recv(conn)
        assert raised.value.code == CloseCode.REPLACED
        with pytest.raises(ServerClosedError):
            await conn.send("after the end")
    assert "token=t1" in fake.paths[1]
    assert "positions=" in fake.paths[1]
    assert fake.paths[2] == "/ws/alice"  # no token, no positions: a fresh session
    assert watch.resumes == [ResumeResult(recovered=False, session_resumed=False)]
    assert watch.path() == [CONNECTING, OPEN, RECONNECTING, OPEN, CLOSED]
    assert isinstance(watch.changes[-1].error, ServerClosedError)


async def test_a_server_failing_right_after_the_handshake_is_backed_off() -> None:
    async def crash(ws: ServerConnection) -> None:
        await ws.send(session_frame("t", history=False))
        await ws.close(CloseCode.INTERNAL_ERROR, "handler crashed")

    async def healthy(ws: ServerConnection) -> None:
        await ws.send(session_frame("t", resumed=True, history=False))
        await ws.send("finally")
        await ws.wait_closed()

    watch = Watch()
    policy = RetryPolicy(base=0.01, cap=0.02, stable_after=10.0)
    async with FakeServer(crash, crash, crash, healthy).running() as fake, connect(
            f"{fake.url}/ws/alice", retry=policy, **watch.options()) as conn:
        assert await recv(conn) == "finally"
    lost = [c for c in watch.changes if c.state is RECONNECTING]
    assert [(c.close_code, c.failures) for c in lost] == [(1011, 1), (1011, 2), (1011, 3)]


@pytest.mark.redis
async def test_history_replays_what_a_client_missed_during_failover(replicas: Replicas) -> None:
    a, b = replicas(2, history_size=100)
    target = [f"{a.ws}/ws/alice"]  # the URL factory reads it: B only once the gap is made
    watch = Watch()
    async with connect(lambda: target[0], client_id="alice", retry=FAST,
                       **watch.options()) as alice:
        assert alice.session is not None
        assert alice.session.history is True
        await asyncio.to_thread(b.post, "/admin/broadcast", {"message": {"n": 1}})
        assert json.loads(await recv(alice)) == {"n": 1}  # unwrapped from its message frame
        assert list(alice.positions) == ["all"]
        assert alice.positions["all"][0] >= 1
        await asyncio.to_thread(a.kill)
        await watch.until(RECONNECTING)
        for n in (2, 3):  # alice is nowhere: only the history keeps these
            await asyncio.to_thread(b.post, "/admin/broadcast", {"message": {"n": n}})
        target[0] = f"{b.ws}/ws/alice"
        await watch.until(OPEN)
        assert [json.loads(await recv(alice)) for _ in range(2)] == [{"n": 2}, {"n": 3}]
        async with asyncio.timeout(5):
            while alice.last_resume is None:
                await watch.control("resume")
        assert alice.last_resume == ResumeResult(recovered=True, replayed=2)
        await asyncio.to_thread(b.post, "/admin/broadcast", {"message": {"n": 4}})
        assert json.loads(await recv(alice)) == {"n": 4}
