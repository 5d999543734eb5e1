"""The browser client (GET /stabilizer.js) in headless Chromium.

Two kinds of test: the module against a server the test scripts frame by frame (pongs, close
codes, tokens, retry advice, history positions, the silent-link watchdog), and the chat
example served by two replicas behind nginx while the replica the page is on restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from tests.support.browser import Page, ScriptedServer
from tests.support.clients import ClientConnection, open_client, recv_json
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import ROOT, UvicornProcess, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ARTIFACTS = ROOT / "tests" / "artifacts"
WAIT_MS = 10_000  # the bound on every wait for the page; none is a sleep
_RUN = itertools.count(1)
CHAT_SECRET = "a-chat-secret-for-the-browser-tests-32+"
ChatReplicas = Callable[[int], list[UvicornProcess]]

# Loads the module into the blank page of a ScriptedServer and records every event.
SETUP = """async ([url, options]) => {
  const { connect } = await import("/stabilizer.js");
  const plain = (v) => (v instanceof ArrayBuffer ? Array.from(new Uint8Array(v)) : v);
  window.log = [];
  window.conn = connect(url, options);
  for (const event of ["state", "session", "message", "resume", "error"]) {
    window.conn.on(event, (...args) => window.log.push([event, ...args.map(plain)]));
  }
}"""


@pytest.fixture
def page_options() -> dict[str, Any]:
    return {"viewport": {"width": 900, "height": 700}}  # the size of the saved screenshots


class Tab:
    """A page running stabilizer.js against a ScriptedServer."""

    def __init__(self, page: Page) -> None:
        self.page = page

    @classmethod
    async def open(cls, page: Page, server: ScriptedServer, url: str | None = None,
                   **options: Any) -> Tab:
        await page.goto(server.base + "/")
        await page.evaluate(SETUP, [url or f"{server.ws}/ws/alice", options])
        return cls(page)

    async def until(self, expression: str, arg: Any = None) -> None:
        """Wait (bounded) until the JS `expression` (a function of `arg`) is truthy."""
        await self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS, polling=20)

    async def wait_state(self, state: str) -> None:
        await self.until("(s) => window.conn.state === s", state)

    async def events(self, kind: str) -> list[list[Any]]:
        """The arguments of every `kind` event so far."""
        log = await self.page.evaluate("window.log")
        return [entry[1:] for entry in log if entry[0] == kind]

    async def wait_events(self, kind: str, count: int) -> list[list[Any]]:
        await self.until("([k, n]) => window.log.filter((e) => e[0] === k).length >= n",
                         [kind, count])
        return await self.events(kind)

    async def send(self, data: str) -> Any:
        """conn.send(data) in the page: True (sent), False (queued) or the error's message."""
        return await self.page.evaluate(
            "(d) => { try { return window.conn.send(d); } catch (e) { return e.message; } }",
            data)


def session_frame(token: str | None, *, resumed: bool = False, history: bool = False,
                  heartbeat_interval: float = 30.0) -> str:
    return json.dumps({"type": "session", "client_id": "alice", "conn_id": "c0ffee",
                       "node_id": "scripted", "resumed": resumed, "token": token,
                       "heartbeat_interval": heartbeat_interval, "history": history})


def message_frame(stream: str, offset: int | None, epoch: str | None, **payload: str) -> str:
    return json.dumps({"type": "message", "stream": stream, "offset": offset, "epoch": epoch,
                       **payload})


async def recv(ws: ServerConnection, timeout: float = 5.0) -> str | bytes:
    async with asyncio.timeout(timeout):
        frame: str | bytes = await ws.recv()
        return frame


def path(ws: ServerConnection) -> str:
    """The path and query of the request that opened `ws`."""
    assert ws.request is not None
    return ws.request.path


def query(ws: ServerConnection) -> dict[str, str]:
    """The query parameters of the request that opened `ws`."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path(ws)).query))


# --- the module against a scripted server ---------------------------------------------------


async def test_opens_on_session_answers_pings_and_delivers_messages(page: Page) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server)
        ws = await server.accept()
        assert path(ws) == "/ws/alice"
        assert await tab.send("early") is False  # queued: no session frame yet
        await ws.send(session_frame("t1"))
        await tab.wait_state("open")
        assert await recv(ws) == "early"  # the queue is flushed once the session is open
        await ws.send(json.dumps({"type": "ping", "timestamp": 1795478748.5}))
        assert await recv(ws) == "pong"
        for frame in ("hello", b"\x00\x01\xff", '{"user": "bob", "message": "hi"}'):
            await ws.send(frame)
        await ws.send(json.dumps({"type": "error", "code": "rate_limited", "detail": "slow"}))
        assert await tab.wait_events("message", 3) == [
            ["hello", None], [[0, 1, 255], None], ['{"user": "bob", "message": "hi"}', None]]
        assert await tab.wait_events("error", 1) == [
            [{"type": "error", "code": "rate_limited", "detail": "slow"}]]
        assert await tab.send("now") is True
        assert await recv(ws) == "now"
        assert await tab.events("state") == [["open", None]]
        assert (await tab.events("session"))[0][0]["token"] == "t1"


async def test_relative_url_keeps_its_query_and_close_ends_the_connection(page: Page) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, url="/ws/alice?room=1&token=ignored")
        ws = await server.accept()
        assert path(ws) == "/ws/alice?room=1"  # only the client's own token is sent
        await ws.send(session_frame("t1"))
        await tab.wait_state("open")
        await ws.close(1001, "going away")
        ws = await server.accept()
        assert query(ws) == {"room": "1", "token": "t1"}
        await ws.send(session_frame("t2"))
        await tab.wait_state("open")
        await ws.send(message_frame("all", 1, "e1", data="not unwrapped"))  # history is off
        [[frame, position]] = await tab.wait_events("message", 1)
        assert json.loads(frame)["data"] == "not unwrapped"
        assert position is None
        await tab.page.evaluate("window.conn.close()")
        await ws.wait_closed()
        assert ws.close_code == 1000
        assert (await tab.events("state"))[-1] == ["closed", {"code": 1000, "reason": ""}]


@pytest.mark.parametrize("code", [1000, 1008, 1009, 4500, 4503])
async def test_final_close_codes_close_for_good(page: Page, code: int) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server)
        ws = await server.accept()
        await ws.send(session_frame("t1"))
        await tab.wait_state("open")
        await ws.close(code, "bye")
        await tab.wait_state("closed")
        assert await tab.events("state") == [["open", None],
                                             ["closed", {"code": code, "reason": "bye"}]]
        assert "closed for good" in await tab.send("too late")
        assert server.connections.empty()  # "closed" is terminal: no retry was scheduled


@pytest.mark.parametrize("code", [4501, 4502])
async def test_rejected_token_reconnects_once_without_it(page: Page, code: int) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, token="stale")
        first = await server.accept()
        assert query(first) == {"token": "stale"}
        await first.close(code, "token rejected")
        second = await server.accept()
        assert query(second) == {}  # a fresh session, at once
        await second.send(session_frame("fresh"))
        await tab.wait_state("open")
        await second.close(1011, "oops")  # an ordinary drop: back with the newest token
        third = await server.accept()
        assert query(third) == {"token": "fresh"}
        await third.close(code, "token rejected")  # rejected again: once more without it
        fourth = await server.accept()
        assert query(fourth) == {}
        await fourth.close(code, "still rejected")  # no token to drop: final
        await tab.wait_state("closed")
        assert server.connections.empty()


async def test_retry_advice_is_waited_for_and_free_text_falls_back_to_backoff(
    page: Page,
) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, stableAfterMs=0)  # every drop: backoff from scratch
        ws = await server.accept()
        for token, code, delay_ms in (("t1", 1012, 800), ("t2", 1013, 300)):
            await ws.send(session_frame(token))
            await tab.wait_state("open")
            advice = json.dumps({"retry_ms": delay_ms})
            await ws.close(code, advice)
            ws = await server.accept()
            assert query(ws) == {"token": token}
            # the delay the client scheduled is the advised one (the clock is not asserted)
            state, info = (await tab.events("state"))[-1]
            assert (state, info) == ("reconnecting",
                                     {"code": code, "reason": advice, "delay_ms": delay_ms})
        await ws.send(session_frame("t3"))
        await tab.wait_state("open")
        await ws.close(1012, "restarting")  # not JSON: the client's own first backoff step
        ws = await server.accept()
        state, info = (await tab.events("state"))[-1]
        assert state == "reconnecting"
        assert 0 <= info["delay_ms"] <= 250
        assert query(ws) == {"token": "t3"}
        # without history nothing is replayed: each reconnect told the application to resync
        lost = {"type": "resume", "recovered": False, "replayed": 0, "failed": []}
        assert await tab.events("resume") == [[lost], [lost]]


async def test_gives_up_after_max_attempts_that_never_open(page: Page) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, maxAttempts=3, backoffBaseMs=10)
        for _ in range(3):
            await (await server.accept()).close(1013, "overloaded")  # before any session
        await tab.wait_state("closed")
        [(state, info)] = await tab.events("state")  # it never opened: no "reconnecting"
        assert (state, info["code"]) == ("closed", 1013)
        assert info["reason"].startswith("3 attempts in a row failed")
        assert server.connections.empty()


async def test_history_positions_dedupe_and_queued_sends_survive_a_reconnect(
    page: Page,
) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server)
        ws = await server.accept()
        await ws.send(session_frame("t1", history=True))
        for frame in (message_frame("all", 1, "e1", data="one"),
                      message_frame("all", 2, "e1", data_b64="AAEC"),
                      message_frame("all", 2, "e1", data="duplicate"),
                      message_frame("g:room", 7, "e2", data="room"),
                      message_frame("all", 3, "e1", data="three")):
            await ws.send(frame)
        assert await tab.wait_events("message", 4) == [
            ["one", {"stream": "all", "offset": 1, "epoch": "e1"}],
            [[0, 1, 2], {"stream": "all", "offset": 2, "epoch": "e1"}],
            ["room", {"stream": "g:room", "offset": 7, "epoch": "e2"}],
            ["three", {"stream": "all", "offset": 3, "epoch": "e1"}]]
        await tab.page.evaluate("""() => window.conn.on("state", (s) => {
            if (s === "reconnecting") window.queued = window.conn.send("while away");
        })""")
        await ws.close(1001, "going away")
        ws = await server.accept()
        assert await tab.page.evaluate("window.queued") is False
        params = query(ws)
        assert params["token"] == "t1"
        assert json.loads(params["positions"]) == {"all": [3, "e1"], "g:room": [7, "e2"]}
        await ws.send(session_frame("t2", resumed=True, history=True))
        assert await recv(ws) == "while away"
        resume = {"type": "resume", "recovered": False, "replayed": 2, "failed": ["g:room"]}
        for frame in (message_frame("all", 3, "e1", data="three again"),  # dropped
                      message_frame("all", 4, "e1", data="four"),
                      message_frame("all", None, None, data="unsequenced"),  # store was down
                      message_frame("all", 1, "e9", data="new epoch"),  # epoch changed: kept
                      json.dumps(resume)):
            await ws.send(frame)
        assert await tab.wait_events("resume", 1) == [[resume]]
        assert (await tab.events("message"))[4:] == [
            ["four", {"stream": "all", "offset": 4, "epoch": "e1"}],
            ["unsequenced", {"stream": "all", "offset": None, "epoch": None}],
            ["new epoch", {"stream": "all", "offset": 1, "epoch": "e9"}]]
        assert await tab.page.evaluate("window.conn.positions") == {
            "all": [1, "e9"], "g:room": [7, "e2"]}


async def test_a_silent_link_is_probed_then_dropped_and_reconnected(page: Page) -> None:
    async with ScriptedServer() as server:
        # 3 s for the scripted server to answer the probe: a loaded machine does not drop it
        tab = await Tab.open(page, server, probeTimeoutMs=3000)
        ws = await server.accept()
        await ws.send(session_frame("t1", heartbeat_interval=0.2))
        await tab.wait_state("open")
        assert await recv(ws) == '{"type":"ping"}'  # silence: the client asks for a pong
        await ws.send('{"type":"pong"}')
        assert await recv(ws) == '{"type":"ping"}'  # answered, so it keeps the link...
        again = await server.accept(timeout=15.0)  # ...until a probe goes unanswered
        assert query(again) == {"token": "t1"}
        state, info = (await tab.events("state"))[-1]
        assert (state, info["code"]) == ("reconnecting", 1006)


# --- the chat example on two replicas behind nginx ------------------------------------------


@pytest.fixture
def chat_replicas(redis_server: RedisServer) -> Iterator[ChatReplicas]:
    """Start two replicas of examples/chat on one Redis namespace (1012 on SIGTERM)."""
    started: list[UvicornProcess] = []

    def start(history_size: int) -> list[UvicornProcess]:
        namespace = f"browser{os.getpid()}-{next(_RUN)}"
        procs = [UvicornProcess(app="examples.chat.app:app", env={
            "STABILIZER_REDIS_URL": redis_server.url,
            "STABILIZER_NAMESPACE": namespace,
            "STABILIZER_NODE_ID": f"replica-{index}",
            "STABILIZER_SHUTDOWN_MODE": "restart",
            "STABILIZER_RETRY_JITTER": "0.5",
            "STABILIZER_HISTORY_SIZE": str(history_size),
            "STABILIZER_HEARTBEAT_INTERVAL": "0.5",  # the page must answer real pings
            "STABILIZER_HEARTBEAT_TIMEOUT": "3600",  # the Python clients never do
            "CHAT_JWT_SECRET": CHAT_SECRET,  # a token from one replica works on the other
        }) for index in range(2)]
        start_all(procs)  # a failure stops the ones it started, then raises
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop()


async def chat_peer(proc: UvicornProcess, name: str) -> ClientConnection:
    """A plain Python client of the chat, logged in as `name` (a bearer token)."""
    token = (await asyncio.to_thread(proc.post, "/login", {"name": name}))["token"]
    peer, _ = await open_client(f"{proc.ws}/ws",
                                additional_headers={"Authorization": f"Bearer {token}"})
    return peer


async def chat_lines(page: Page) -> list[str]:
    lines: list[str] = await page.locator("#log .msg").all_inner_texts()
    return lines


async def wait_lines(page: Page, *lines: str) -> None:
    await page.wait_for_function(
        """(want) => {
            const have = [...document.querySelectorAll("#log .msg")].map((e) => e.textContent);
            return want.every((line) => have.includes(line));
        }""", arg=list(lines), timeout=WAIT_MS, polling=20)


async def wait_open_on(page: Page, node_id: str) -> None:
    await page.wait_for_function(
        """(node) => document.getElementById("state").textContent === "open"
                     && document.getElementById("node").textContent === node""",
        arg=node_id, timeout=WAIT_MS, polling=20)


async def say(page: Page, text: str) -> None:
    """Type `text` into the chat form and send it, as a user would."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def next_chat(ws: ClientConnection, user: str) -> dict[str, Any]:
    """The next chat line from `user` (lines from others, e.g. the client itself, skipped)."""
    while True:
        line = await recv_json(ws)
        if line.get("type") == "message":  # history on: the server wraps every message
            line = json.loads(line["data"])
        if line["user"] == user:
            return dict(line)


@pytest.mark.redis
@pytest.mark.parametrize("history_size", [0, 100], ids=["live", "history"])
async def test_chat_page_survives_a_restart_of_its_replica_behind_nginx(
    page: Page, chat_replicas: ChatReplicas, history_size: int
) -> None:
    replicas = chat_replicas(history_size)
    proxy = Nginx([proc.port for proc in replicas]).start()
    peer: ClientConnection | None = None
    try:
        await page.goto(f"http://127.0.0.1:{proxy.port}/?name=browser")
        await page.wait_for_function(
            "() => document.getElementById('state').textContent === 'open'", timeout=WAIT_MS)
        node = await page.text_content("#node")
        by_id = {proc.env["STABILIZER_NODE_ID"]: proc for proc in replicas}
        assert node in by_id, node
        victim = by_id.pop(node)
        [(survivor_id, survivor)] = by_id.items()
        await page.evaluate("""() => {
            window.states = [];
            window.sessions = [];
            window.resumes = [];
            window.chat.on("state", (state, info) => window.states.push([state, info]));
            window.chat.on("session", (s) => window.sessions.push(s));
            window.chat.on("resume", (r) => window.resumes.push(r));
            // the tab's status calls (one per change of its input) are counted until
            // answered: the restart below must not cut one short
            window.unanswered = 0;
            window.called = 0;
            const rpc = window.chat.rpc.bind(window.chat);
            window.chat.rpc = (...args) => {
                window.called += 1;
                window.unanswered += 1;
                const reply = rpc(...args);
                reply.finally(() => { window.unanswered -= 1; }).catch(() => {});
                return reply;
            };
        }""")

        peer = await chat_peer(survivor, "python")
        await peer.send("before the restart")
        await say(page, "hello from the browser")
        assert (await next_chat(peer, "browser"))["message"] == "hello from the browser"
        await wait_lines(page, "python: before the restart", "browser: hello from the browser")
        await page.wait_for_function("() => window.unanswered === 0", timeout=WAIT_MS)
        assert await page.evaluate("window.called") >= 2  # typing, then online again

        meanwhile = [f"while {node} is down #{i}" for i in range(3)]
        if history_size:
            # Chromium's offline mode holds every frame for the page until it is lifted, so
            # the page surely misses what is sent meanwhile and must get it by replay
            await page.context.set_offline(True)
        assert await asyncio.to_thread(victim.stop) is not None  # SIGTERM: graceful, 1012
        if not history_size:
            await wait_open_on(page, survivor_id)  # without history only live messages count
        for text in meanwhile:
            await peer.send(text)
        await page.context.set_offline(False)
        await wait_open_on(page, survivor_id)  # reconnected by itself, through nginx
        await wait_lines(page, *(f"python: {text}" for text in meanwhile))
        await say(page, "still here")
        assert (await next_chat(peer, "browser"))["message"] == "still here"
        await say(page, "/who")  # a remote procedure: users on every replica
        await wait_lines(page, "online: browser, python")

        await asyncio.to_thread(victim.start)  # the same port again
        rejoined = await chat_peer(victim, "rejoined")
        try:
            await rejoined.send(f"{node} is back")  # crosses replicas to reach the page
            await wait_lines(page, f"rejoined: {node} is back")
        finally:
            await rejoined.close()

        states = await page.evaluate("window.states")
        assert [state for state, _ in states] == ["reconnecting", "open"]
        closed = states[0][1]
        assert closed["code"] == 1012  # a restart, not a crash...
        assert closed["delay_ms"] == json.loads(closed["reason"])["retry_ms"]  # ...and advice
        sessions = await page.evaluate("window.sessions")
        assert [(s["node_id"], s["resumed"], s["history"]) for s in sessions] == [
            (survivor_id, True, bool(history_size))]
        replayed = len(meanwhile) if history_size else 0
        assert await page.evaluate("window.resumes") == [
            {"type": "resume", "recovered": bool(history_size), "replayed": replayed,
             "failed": []}]
        async with asyncio.timeout(WAIT_MS / 1000):  # the page answers the survivor's pings
            while (await asyncio.to_thread(survivor.get, "/stats"))[1]["counters"]["pongs"] < 1:
                await asyncio.sleep(0.05)  # bounded poll of a counter, not a synchronisation

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = "browser-chat.png" if history_size else "browser-chat-without-history.png"
        await page.screenshot(path=str(ARTIFACTS / name), full_page=True)
        assert await page.text_content("#state") == "open"
        assert await page.get_attribute("#state", "class") == "open"
        assert await page.text_content("#node") == survivor_id
        notes = await page.locator("#log .note").all_inner_texts()
        assert notes == [f"joined {node}", f"resumed on {survivor_id}"]
        lines = await chat_lines(page)
        for line in ("python: before the restart", "browser: hello from the browser",
                     *(f"python: {text}" for text in meanwhile), "browser: still here",
                     f"rejoined: {node} is back"):
            assert lines.count(line) == 1, (line, lines)
    finally:
        if peer is not None:
            await peer.close()
        proxy.stop()


@pytest.mark.redis
async def test_two_tabs_of_one_user_on_two_replicas_both_get_what_is_sent_to_the_user(
    page: Page, chat_replicas: ChatReplicas,
) -> None:
    """Issue 11: the chat example logs in with a JWT and connects with protocol v2; two tabs
    of ann (one per replica) are two connections, and "@ann ..." from bob reaches both."""
    replicas = chat_replicas(0)
    second = await page.context.new_page()
    bob: ClientConnection | None = None
    try:
        await page.goto(f"http://127.0.0.1:{replicas[0].port}/?name=ann")
        await second.goto(f"http://127.0.0.1:{replicas[1].port}/?name=ann")
        for tab, node in ((page, "replica-0"), (second, "replica-1")):
            await wait_open_on(tab, node)
        devices = [await tab.text_content("#device") for tab in (page, second)]
        assert devices[0] != devices[1]  # a second tab is a second connection, not a kick
        bob = await chat_peer(replicas[1], "bob")
        await bob.send("@ann psst")
        for tab in (page, second):
            await wait_lines(tab, "bob → ann: psst")
        mine = await recv_json(bob)  # the sender's own tabs get a copy
        assert (mine["user"], mine["to"], mine["message"]) == ("bob", "ann", "psst")
        await say(second, "@bob thanks")  # to bob, and to every tab of ann
        line = await recv_json(bob)
        assert (line["user"], line["to"], line["message"]) == ("ann", "bob", "thanks")
        await wait_lines(page, "ann → bob: thanks")
        for tab in (page, second):
            assert await tab.text_content("#state") == "open"
            assert await tab.text_content("#me") == "ann"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await second.screenshot(path=str(ARTIFACTS / "browser-two-tabs.png"), full_page=True)
    finally:
        if bob is not None:
            await bob.close()
        await second.close()
