"""A refused ``subscribe(channel, onMessage, {presence: true})`` of a channel the browser
client holds already leaves that subscription as it was: not following presence.

Before, the page made the channel's presence copy before the request and kept it after a
refusal when the channel was held; after the next reconnect it subscribed to the channel
again asking for presence (into a kept session too, where only the channels that follow
presence are asked again), was refused again, and dropped a subscription that worked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.test_browser_resubscribe import asked, next_is_the_pages_message, reply
from tests.e2e.test_browser_v2 import (
    ScriptedV2Server,
    Tab,
    frame_of,
    opened_tab,
    opened_with_history,
    session_frame,
)
from tests.e2e.test_browser_v2 import v2_server as v2_server  # (the fixture)
from tests.support.browser import Page
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# Subscribes to `channel` with `options` (onMessage records in window.routed[channel],
# onUnsubscribed in window.ended) without awaiting it: window.subscribing settles to "ok"
# or the refusal's code.
SUBSCRIBE = """([channel, options]) => {
  window.routed = window.routed ?? {};
  window.ended = window.ended ?? [];
  window.routed[channel] = window.routed[channel] ?? [];
  window.subscribing = window.conn.subscribe(
    channel, (data) => window.routed[channel].push(data),
    { ...options, onUnsubscribed: (reason) => window.ended.push([channel, reason]) },
  ).then(() => "ok", (err) => err.code);
}"""


async def answered(page: Page, ws: Any, channel: str, options: dict[str, Any],
                   code: str | None = None) -> Any:
    """Have the page subscribe to `channel`; answer it (`code`: refuse it); its outcome."""
    await page.evaluate(SUBSCRIBE, [channel, options])
    await reply(ws, await frame_of(ws), code)
    return await page.evaluate("window.subscribing")


@pytest.mark.parametrize("history", [False, True], ids=["fresh session", "kept session"])
async def test_a_held_channel_survives_a_refused_presence_subscribe_and_a_reconnect(
        page: Page, history: bool) -> None:
    async with ScriptedV2Server() as server:
        tab, ws = await (opened_with_history if history else opened_tab)(page, server)
        assert await answered(page, ws, "stats", {}) == "ok"
        assert await answered(page, ws, "stats", {"presence": True}, "bad_request") \
            == "bad_request"
        assert await tab.value("window.conn.presence('stats')") is None
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        await frame_of(ws)  # connect
        await ws.send(session_frame("r2", "tab-1", resumed=history, history=history))
        if history:  # the session kept the membership; nothing follows presence
            await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                      "failed": []}))
            await tab.wait_events("resume", 1)  # (a subscribe it made would be sent by now)
        else:  # a fresh session: subscribed again, as it was (without presence)
            again = await frame_of(ws)
            asked(again, "stats")
            await reply(ws, again)
        await next_is_the_pages_message(tab, ws)
        await ws.send(json.dumps({"type": "message", "channel": "stats", "data": "tick"}))
        await tab.until("() => window.routed.stats.length > 0")
        assert await tab.value("window.routed.stats") == ["tick"]
        assert await tab.value("window.ended") == []


async def test_a_followed_channel_stays_followed_after_a_subscribe_without_presence(
        page: Page) -> None:
    """The server goes on following presence: so does the page, and a reconnect into a
    kept session asks for it again."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_with_history(page, server)
        assert await answered(page, ws, "room", {"presence": True}) == "ok"
        assert await answered(page, ws, "room", {"params": {"seat": 2}}) == "ok"
        assert await tab.value("window.conn.presence('room') !== null")
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        await frame_of(ws)  # connect
        await ws.send(session_frame("r2", "tab-1", resumed=True, history=True))
        await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                  "failed": []}))
        again = await frame_of(ws)
        asked(again, "room", presence=True)
        assert again["params"] == {"seat": 2}
        await reply(ws, again)
        await next_is_the_pages_message(tab, ws)


async def test_a_refused_presence_subscribe_of_a_new_channel_leaves_nothing(
        page: Page) -> None:
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        assert await answered(page, ws, "room", {"presence": True}, "forbidden") == "forbidden"
        assert await tab.value("window.conn.presence('room')") is None
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        await frame_of(ws)  # connect
        await ws.send(session_frame("r2", "tab-1"))
        await tab.wait_events("session", 2)  # (a subscribe it made would be sent by now)
        await next_is_the_pages_message(tab, ws)  # nothing subscribed again


async def test_against_a_server_whose_namespace_turns_presence_off(
        page: Page, v2_server: UvicornProcess) -> None:
    """v2_app's stats:* channels have no presence: a subscribe with presence gets
    bad_request before the hook is asked."""
    tab = await Tab.open(page, v2_server.base, backoffBaseMs=10)
    await tab.wait_state("open")
    async def outcome(channel: str, options: dict[str, Any]) -> Any:
        await page.evaluate(SUBSCRIBE, [channel, options])
        return await page.evaluate("window.subscribing")

    assert await outcome("stats:x", {}) == "ok"
    assert await outcome("stats:x", {"presence": True}) == "bad_request"
    # a channel that follows presence, subscribed again after stats:x (in the order
    # subscribed): once the server was asked for it again, the round is over
    assert await outcome("presence:room", {"presence": True}) == "ok"
    await asyncio.to_thread(v2_server.post, "/admin/disconnect_user/alice?code=1012")

    async def round_over() -> list[str]:
        while True:
            channels = (await asyncio.to_thread(v2_server.get, "/admin/asked"))[1]
            if channels.count("presence:room") >= 2:
                return list(channels)
            await asyncio.sleep(0.02)

    async with asyncio.timeout(10):
        channels = await round_over()
    assert channels.count("stats:x") == 2  # (the refused one never reached the hook)
    assert await tab.value("window.ended") == []
    await asyncio.to_thread(v2_server.post, "/admin/send_group/stats:x", {"message": "tick"})
    await tab.until("() => window.routed['stats:x'].length > 0")
    assert await tab.value("window.routed['stats:x']") == ["tick"]
