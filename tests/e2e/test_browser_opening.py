"""The browser client while a socket opens, in headless Chromium: the resume positions it
puts in a protocol-1 URL stay under what servers read in a handshake line, and a socket that
does not open within connectTimeoutMs (no answer to the upgrade, or no session frame after
it) is dropped and counts as a failed attempt."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.test_browser import Tab, query, session_frame
from tests.e2e.test_browser_v2 import ScriptedV2Server, frame_of
from tests.e2e.test_browser_v2 import Tab as V2Tab
from tests.support.browser import Page, ScriptedServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MAX_RESUME_URL = 6 * 1024  # frames.js: the longest path and query that carries positions
# 64 groups with long names, one message each: about 9 KB of positions JSON, 12 KB encoded
GROUPS = [f"room-{n:02d}-" + "x" * 110 for n in range(64)]

# Records the URL of every WebSocket the page opens (window.opened), before any script runs.
SPY = """(() => {
  const Real = window.WebSocket;
  window.opened = [];
  window.WebSocket = class extends Real {
    constructor(url, protocols) { super(url, protocols); window.opened.push(String(url)); }
  };
})()"""


@pytest.fixture
def history_server() -> Iterator[UvicornProcess]:
    """tests/e2e/app.py with history, reading handshake lines of at most 8 KiB, as uvicorn
    does by default (the other e2e servers raise the limit, as compose.yaml does)."""
    env = {"STABILIZER_HISTORY_SIZE": "50", "STABILIZER_HEARTBEAT_INTERVAL": "3600",
           "STABILIZER_HEARTBEAT_TIMEOUT": "3600", "WEBSOCKETS_MAX_LINE_LENGTH": "8192"}
    with UvicornProcess(env=env) as proc:
        yield proc


async def test_socket_urls_carry_positions_only_within_the_budget(page: Page) -> None:
    async with ScriptedServer() as server:
        await page.goto(server.base + "/")
        urls, targets = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const positions = (count) => Object.fromEntries([...Array(count).keys()].map(
              (n) => [`g:room-${n}-` + "x".repeat(40), [n + 1, "AbCdEfGh"]]));
            const target = (url) => url.pathname.length + url.search.length;
            const base = "ws://h/ws/alice?room=1";
            return [[10, 200].map((n) => String(f.socketUrl(base, "s1.tok", positions(n)))),
                    [10, 200].map((n) => target(f.socketUrl(base, "s1.tok", positions(n))))];
        }""")
    with_positions, without = (urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
                               for url in urls)
    assert len(json.loads(with_positions["positions"][0])) == 10
    assert without == {"room": ["1"], "token": ["s1.tok"]}  # the token alone: replayed
    assert max(targets) <= MAX_RESUME_URL


async def test_positions_too_long_for_a_handshake_line_stay_home_and_none_is_lost_or_twice(
    page: Page, history_server: UvicornProcess,
) -> None:
    """A page in 64 groups with a message each, dropped: its resume URL with ?positions= was
    about 12 KB, and uvicorn neither answers nor closes a handshake line over 8 KiB, so the
    page waited in "reconnecting" for good. Now it comes back with its token alone: the
    server replays each group from the session's start and the page drops what it had."""
    server = history_server
    await page.add_init_script(SPY)
    async with ScriptedServer() as pages:
        tab = await Tab.open(page, pages, f"{server.ws}/ws/alice",
                             backoffBaseMs=10)
        await tab.wait_state("open")
        for group in GROUPS:
            await asyncio.to_thread(server.post, f"/admin/join/alice/{group}")
        for index, group in enumerate(GROUPS):
            await asyncio.to_thread(server.post, f"/admin/send_group/{group}",
                                    {"message": f"before {index}"})
        await tab.until("(n) => Object.keys(window.conn.positions).length === n", len(GROUPS))
        assert await page.evaluate(
            "encodeURIComponent(JSON.stringify(window.conn.positions)).length") > 8192
        await asyncio.to_thread(server.post, "/admin/disconnect/alice?code=4000")
        for index, group in enumerate(GROUPS):  # while away (or just back: either way once)
            await asyncio.to_thread(server.post, f"/admin/send_group/{group}",
                                    {"message": f"away {index}"})
        await tab.until("() => window.log.filter((e) => e[0] === 'resume').length === 1")
        assert [state for state, _ in await tab.events("state")] == [
            "open", "reconnecting", "open"]
        [[first], [again]] = await tab.events("session")
        assert again["resumed"] is True
        [[resume]] = await tab.events("resume")
        assert resume["recovered"] is True
        opened = await page.evaluate("window.opened")
        assert len(opened) == 2
        resumed_with = urllib.parse.parse_qs(urllib.parse.urlsplit(opened[1]).query)
        assert resumed_with == {"token": [first["token"]]}
        await asyncio.to_thread(server.post, f"/admin/send_group/{GROUPS[0]}",
                                {"message": "after"})
        messages = await tab.wait_events("message", 2 * len(GROUPS) + 1)
        texts = [text for text, _ in messages]
        assert texts[-1] == "after"
        assert Counter(texts) == Counter(
            ["after", *(f"{when} {n}" for when in ("before", "away") for n in range(64))])
        await page.evaluate("window.conn.close()")


class Unanswering:
    """A TCP server that reads a WebSocket upgrade and never answers it, nor closes: what
    uvicorn does with a handshake line over its limit. `accepted` gets each connection."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[None] = asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.accepted.put(None)
        await reader.read()  # until the client gives up
        writer.close()

    @property
    def ws(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Unanswering:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
            await writer.wait_closed()


async def test_an_upgrade_never_answered_fails_the_attempt_after_connect_timeout(
        page: Page) -> None:
    """Chromium waits for an upgrade's answer without end: the page stayed "connecting"
    and maxAttempts never counted."""
    async with ScriptedServer() as pages, Unanswering() as unanswering:
        tab = await Tab.open(page, pages, f"{unanswering.ws}/ws/alice", connectTimeoutMs=300,
                             backoffBaseMs=10, maxAttempts=3)
        for _ in range(3):
            async with asyncio.timeout(10):
                await unanswering.accepted.get()
        await tab.wait_state("closed")
        [(state, info)] = await tab.events("state")
        assert (state, info["code"]) == ("closed", 1006)
        assert info["reason"] == "3 attempts in a row failed: not open within 300 ms"


async def test_a_server_that_upgrades_and_says_nothing_is_left_after_connect_timeout(
    page: Page,
) -> None:
    """A protocol-1 socket that opened but got no frame: before, "connecting" for good."""
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, connectTimeoutMs=300, backoffBaseMs=10,
                             token="t0")
        first = await server.accept()
        await asyncio.wait_for(first.wait_closed(), 10)  # the page left it: a failed attempt
        again = await server.accept()
        assert query(again) == {"token": "t0"}  # (a failed attempt keeps the token)
        await again.send(session_frame("t1"))
        await tab.wait_state("open")  # the deadline ends with the session
        await again.send("hello")
        await tab.wait_events("message", 1)
        assert await tab.events("state") == [["open", None]]  # (it was "connecting")


async def test_a_v2_socket_without_a_session_frame_is_left_after_connect_timeout(
    page: Page,
) -> None:
    async with ScriptedV2Server() as server:
        tab = await V2Tab.open(page, server.base, f"{server.ws}/ws", scripted=True,
                               device="tab-1", connectTimeoutMs=300, backoffBaseMs=10,
                               maxAttempts=2)
        for token in ("jwt-1", "jwt-2"):
            ws = await server.accept()
            assert (await frame_of(ws))["token"] == token  # connect: then nothing
            await asyncio.wait_for(ws.wait_closed(), 10)
        await tab.wait_state("closed")
        [(state, info)] = await tab.events("state")
        assert (state, info["code"]) == ("closed", 1006)
        assert info["reason"] == "2 attempts in a row failed: not open within 300 ms"


async def test_connect_timeout_is_ten_seconds_unless_set(page: Page) -> None:
    async with ScriptedServer() as server:
        await page.goto(server.base + "/")
        assert await page.evaluate("""async () =>
          (await import("/stabilizer/options.js")).DEFAULTS.connectTimeoutMs""") == 10_000
