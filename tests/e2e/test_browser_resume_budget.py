"""The browser client's resuming connect frame (positions, and the channels they do not
already hold, within MAX_RESUME_TEXT bytes of UTF-8) and the position of a channel whose
automatic leave fails, in headless Chromium against a scripted v2 server."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.conftest import V2Replicas
from tests.e2e.test_browser_v2 import (
    ScriptedV2Server,
    Tab,
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


async def test_a_resume_fits_the_max_message_size_of_the_last_session_frame(
        page: Page) -> None:
    """The page keeps its resuming connect frame under the max_message_size the server's
    last session frame stated; a value that is not a positive integer, or none (an older
    server), leaves the budget at MAX_RESUME_TEXT. Before, a server whose limit was under
    the frame closed it with 1009, final for the page."""
    channels = sorted(f"room-{n:02d}-" + "x" * 110 for n in range(40))
    async with ScriptedV2Server() as server:
        tab = await Tab.open(page, server.base, f"{server.ws}/ws", scripted=True,
                             device="tab-1", backoffBaseMs=10)
        ws = await server.accept()
        await frame_of(ws)  # connect
        await ws.send(limited("r0", 4096, resumed=False))
        await tab.wait_state("open")
        await page.evaluate("""(channels) => {
          window.subscribing = Promise.all(channels.map((c) => window.conn.subscribe(c)));
        }""", channels)
        for _ in channels:
            request = await frame_of(ws)
            await ws.send(json.dumps({"type": "reply", "id": request["id"],
                                      "result": {"channel": request["channel"]}}))
        await page.evaluate("window.subscribing")
        limit: int | None = 4096  # what the last session frame stated, read
        for turn, (stated, read) in enumerate([("4096", None), (-1, None), (2048, 2048),
                                               (4096.5, None), (None, None)]):
            await ws.close(1012, '{"retry_ms": 10}')
            ws = await server.accept()
            text = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(text, str)
            named = json.loads(text)["channels"]
            if limit is None:
                assert named == channels
            else:
                assert len(text.encode()) <= limit
                assert 0 < len(named) < len(channels)
                assert named == channels[:len(named)]
            await ws.send(limited(f"r{turn + 1}", stated, resumed=True))
            await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                      "failed": []}))
            await tab.until("(n) => window.log.filter((e) => e[0] === 'resume').length >= n",
                            turn + 1)
            limit = read
        await page.evaluate("window.conn.close()")


def limited(token: str, limit: object, *, resumed: bool) -> str:
    """A scripted session frame (history on) that states `limit` as max_message_size
    (None: states none)."""
    frame = json.loads(session_frame(token, "tab-1", resumed=resumed, history=True))
    if limit is not None:
        frame["max_message_size"] = limit
    return json.dumps(frame)


async def test_a_page_resumes_into_a_server_whose_max_message_size_is_small(
        page: Page, v2_replicas: V2Replicas) -> None:
    """A real server reading frames of at most 4,096 bytes (history on), a page holding 40
    channels with a message each: about 5.5 KB of positions and 4.9 KB of names. Before,
    its resuming connect frame took both: 1009, final for the page, and the session was
    lost. Now the positions stay home (the server replays from the session's start and
    the page drops what it had), the channels that fit are named, and it resumes."""
    [server] = v2_replicas(max_message_size=4096, history_size=50, history_ttl=60,
                           session_ttl=60)
    channels = [f"public:room-{n:02d}-" + "x" * 110 for n in range(40)]
    tab = await Tab.open(page, server.base, backoffBaseMs=10)
    await tab.wait_state("open")
    await page.evaluate("""async (channels) => {
      for (const channel of channels) await window.conn.subscribe(channel);
    }""", channels)
    for channel in channels:
        await asyncio.to_thread(server.post, f"/admin/send_group/{channel}", {"message": "m"})
    await tab.until("(n) => Object.keys(window.conn.positions).length === n", len(channels))
    await asyncio.to_thread(server.post, "/admin/disconnect_user/alice?code=1012")
    await tab.until("() => window.conn.state === 'closed' || window.log.some("
                    "(e) => e[0] === 'resume')")
    assert await tab.value("window.conn.state") == "open", await tab.events("state")
    [[session], [again]] = await tab.events("session")
    assert (session["max_message_size"], again["resumed"]) == (4096, True)
    await asyncio.to_thread(server.post, f"/admin/send_group/{channels[0]}",
                            {"message": "after"})
    messages = await tab.wait_events("message", len(channels) + 1)
    assert [message for message, _ in messages[len(channels):]] == ["after"]  # no replay
    client_id = session["client_id"]
    for channel in (channels[0], channels[-1]):  # named, and left out: both kept
        assert (await asyncio.to_thread(server.get, f"/admin/groups/{channel}"))[1] == [
            client_id]
    await page.evaluate("window.conn.close()")
