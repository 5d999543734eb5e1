"""The browser client while a socket opens, in headless Chromium: the resume positions it
puts in a protocol-1 URL stay under what servers read in a handshake line."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.test_browser import Tab
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
