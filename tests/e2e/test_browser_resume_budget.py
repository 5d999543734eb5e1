"""The browser client's resuming connect frame (positions, and the channels they do not
already hold, within MAX_RESUME_TEXT bytes of UTF-8) and the position of a channel whose
automatic leave fails, in headless Chromium against a scripted v2 server."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_browser_v2 import (
    ScriptedV2Server,
    frame_of,
    opened_with_history,
    session_frame,
)
from tests.support.browser import Page

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MAX_RESUME_TEXT = 64 * 1024 - 1024


async def test_a_resume_names_the_channels_its_positions_do_not_hold(page: Page) -> None:
    """The server counts a channel whose g: position a resume sends as held. Before, every
    channel was named: those names used up the budget and the channels without a position
    (sorted last) were left out, losing the notice of a leave made while away."""
    async with ScriptedV2Server() as server:
        await page.goto(server.base + "/")
        named, bare = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const busy = [...Array(120).keys()].map(
              (n) => `room-${String(n).padStart(3, "0")}-` + "x".repeat(246));
            const quiet = [...Array(8).keys()].map((n) => `zz-${n}-` + "x".repeat(246));
            const positions = { "c:someone": [1, "AbCdEfGh"] };
            for (const channel of busy) positions["g:" + channel] = [1, "AbCdEfGh"];
            const frame = f.connectFrame("d", null, "s1.x", positions, null,
                                         [...busy, ...quiet].sort());
            const bare = f.connectFrame("d", null, "s1.x", {}, null, ["a", "b"]).channels;
            return [frame.channels.map((name) => name.slice(0, 4)), bare];
        }""")
    assert named == ["zz-0", "zz-1", "zz-2", "zz-3", "zz-4", "zz-5", "zz-6", "zz-7"]
    assert bare == ["a", "b"]


async def test_the_resume_budget_counts_utf8_bytes(page: Page) -> None:
    """Positions were measured in UTF-16 units: with CJK group names a connect frame took
    about 2.7 times MAX_RESUME_TEXT bytes, over a server's max_message_size (1009)."""
    async with ScriptedV2Server() as server:
        await page.goto(server.base + "/")
        sent, named, used, small = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const size = (value) => new TextEncoder().encode(JSON.stringify(value)).length;
            const channels = [...Array(230).keys()].map(
              (n) => String(n).padStart(3, "0") + "\u4e2d".repeat(247));
            const positions = {};
            for (const channel of channels) positions["g:" + channel] = [1, "AbCdEfGh"];
            const frame = f.connectFrame("d", null, "s1.x", positions, null, channels);
            const one = { ["g:" + "\u4e2d".repeat(200)]: [1, "e"] };
            return [f.sendable(positions), frame.channels.length,
                    size(frame.positions ?? {}) + size(frame.channels), f.sendable(one)];
        }""")
    assert (sent, small) == (False, True)
    assert 0 < named < 230
    assert used <= MAX_RESUME_TEXT


async def test_a_failed_automatic_leave_keeps_the_position_of_the_channel(
        page: Page) -> None:
    """A kept resume, the presence re-subscribe refused, and the page's unsubscribe failing
    (unavailable): the subscription stays. Before, its position was already forgotten, so
    the next resume sent none and the server replayed the channel from the session's
    start again."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_with_history(page, server)
        await page.evaluate("""() => {
          window.subscribing = window.conn.subscribe("stage", null, { presence: true });
        }""")
        request = await frame_of(ws)
        await ws.send(json.dumps({"type": "reply", "id": request["id"],
                                  "result": {"channel": "stage"}}))
        await page.evaluate("window.subscribing")
        await ws.send(json.dumps({"type": "message", "stream": "g:stage", "offset": 3,
                                  "epoch": "e", "data": "three"}))
        await tab.until("() => window.conn.positions['g:stage']?.[0] === 3")
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        assert (await frame_of(ws))["positions"] == {"g:stage": [3, "e"]}
        await ws.send(session_frame("r2", "tab-1", resumed=True, history=True))
        await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                  "failed": []}))
        again = await frame_of(ws)
        assert (again["type"], again["channel"]) == ("subscribe", "stage")
        await ws.send(json.dumps({"type": "reply", "id": again["id"], "error": {
            "code": "forbidden", "message": "not any more"}}))
        leave = await frame_of(ws)
        assert (leave["type"], leave["channel"]) == ("unsubscribe", "stage")
        await ws.send(json.dumps({"type": "reply", "id": leave["id"], "error": {
            "code": "unavailable", "message": "not unsubscribed"}}))
        await tab.until("() => window.conn.positions['g:stage']?.[0] === 3")  # restored
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        connect = await frame_of(ws)
        assert connect["positions"] == {"g:stage": [3, "e"]}  # still held: no replay
        assert "channels" not in connect  # (its position holds it)
        await page.evaluate("window.conn.close()")
