"""The browser client asks again, after its backoff, for a channel whose automatic subscribe
(after a reconnect) a scripted v2 server answers with a code that says "try later"
(`unavailable`, `overloaded`, `rate_limited`, `timeout`). Before, it took such an answer for
"nothing changed": it kept the channel, never asked again and told no one, while the server
had no membership (or, after a kept resume, followed no presence for the new socket)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from tests.e2e.test_browser_v2 import (
    ScriptedV2Server,
    Tab,
    frame_of,
    opened_with_history,
    session_frame,
)
from tests.support.browser import Page

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# Subscribes to each channel named (with presence when asked); each subscription's
# onUnsubscribed records [channel, reason] in window.ended.
SUBSCRIBE = """([channels, presence]) => {
  window.ended = window.ended ?? [];
  const told = (channel) => (reason) => window.ended.push([channel, reason]);
  window.subscribing = Promise.all(channels.map((channel) => window.conn.subscribe(
    channel, null, { presence, onUnsubscribed: told(channel) })));
}"""


async def reply(ws: ServerConnection, request: dict[str, Any], code: str | None = None) -> None:
    """Answer `request`: its result, or the error `code`."""
    answer: dict[str, Any] = {"type": "reply", "id": request["id"]}
    if code is None:
        answer["result"] = {"channel": request["channel"]}
    else:
        answer["error"] = {"code": code, "message": "try later"}
    await ws.send(json.dumps(answer))


async def subscribed(tab: Tab, ws: ServerConnection, channels: list[str], *,
                     presence: bool = False) -> None:
    """Have the page subscribe to `channels`, each allowed."""
    await tab.page.evaluate(SUBSCRIBE, [channels, presence])
    for _ in channels:
        await reply(ws, await frame_of(ws))
    await tab.page.evaluate("window.subscribing")


async def afresh(server: ScriptedV2Server, ws: ServerConnection,
                 token: str = "r2") -> ServerConnection:
    """Close `ws` (1012: come back) and give the page's reconnect a fresh session."""
    await ws.close(1012, '{"retry_ms": 10}')
    ws = await server.accept()
    await frame_of(ws)  # connect
    await ws.send(session_frame(token, "tab-1"))
    return ws


async def opened(page: Page, server: ScriptedV2Server, **options: Any
                 ) -> tuple[Tab, ServerConnection]:
    """A scripted tab (device tab-1, tiny backoff) given a session without history, open."""
    tab = await Tab.open(page, server.base, f"{server.ws}/ws", scripted=True, device="tab-1",
                         backoffBaseMs=10, backoffCapMs=20, **options)
    ws = await server.accept()
    await frame_of(ws)  # connect
    await ws.send(session_frame("r1", "tab-1"))
    await tab.wait_state("open")
    return tab, ws


async def next_is_the_pages_message(tab: Tab, ws: ServerConnection) -> None:
    """Nothing more is asked: the page's next message is the next frame the server reads."""
    await tab.value("window.conn.send('after')")
    assert await frame_of(ws) == {"type": "message", "data": "after"}


def asked(frame: dict[str, Any], channel: str, presence: bool = False) -> None:
    assert (frame["type"], frame["channel"], frame.get("presence", False)) == (
        "subscribe", channel, presence)


async def test_try_later_answers_are_asked_again_until_the_server_decides(page: Page) -> None:
    """The reviewer's case (`unavailable` after a fresh session), and a final refusal
    after a "try later" one, which ends the subscription with its code."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened(page, server)
        await subscribed(tab, ws, ["room", "stage"])
        ws = await afresh(server, ws)
        for channel, code in (("room", "unavailable"), ("stage", "overloaded")):
            again = await frame_of(ws)
            asked(again, channel)
            await reply(ws, again, code)
        for channel, code in (("room", "rate_limited"), ("stage", "forbidden"),
                              ("room", "timeout"), ("room", None)):
            again = await frame_of(ws)  # after the backoff
            asked(again, channel)
            await reply(ws, again, code)
        await next_is_the_pages_message(tab, ws)
        assert await tab.value("window.ended") == [["stage", "forbidden"]]


async def test_a_presence_resync_answered_overloaded_after_a_kept_resume_is_asked_again(
        page: Page) -> None:
    """The session kept the membership; the presence re-sync is asked again, and the
    state it brings reaches the page's copy."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_with_history(page, server)
        await subscribed(tab, ws, ["stage"], presence=True)
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        await frame_of(ws)  # connect
        await ws.send(session_frame("r2", "tab-1", resumed=True, history=True))
        await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                  "failed": []}))
        again = await frame_of(ws)
        asked(again, "stage", presence=True)
        await reply(ws, again, "overloaded")
        again = await frame_of(ws)  # after the backoff
        asked(again, "stage", presence=True)
        await reply(ws, again)
        await ws.send(json.dumps({"type": "presence_state", "channel": "stage", "presence": {
            "bob": [{"client_id": "bob", "meta": {}}]}}))
        await tab.until("() => window.conn.presence('stage')?.count() === 1")
        await next_is_the_pages_message(tab, ws)
        assert await tab.value("window.ended") == []


async def test_a_lost_socket_ends_the_asking_and_the_next_reconnect_starts_over(
        page: Page) -> None:
    """The socket closes while a channel waits to be asked again: the next session asks
    once, not once for each round."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened(page, server)
        await subscribed(tab, ws, ["room"])
        ws = await afresh(server, ws)
        again = await frame_of(ws)
        await reply(ws, again, "unavailable")
        ws = await afresh(server, ws, "r3")
        again = await frame_of(ws)
        asked(again, "room")
        await reply(ws, again)
        await next_is_the_pages_message(tab, ws)
        assert await tab.value("window.ended") == []


async def test_try_later_answers_end_the_subscription_after_max_attempts(page: Page) -> None:
    """Bounded as reconnects are: after maxAttempts such answers in a row the page gives
    the channel up, as after a refusal, with the last code."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened(page, server, maxAttempts=2)
        await subscribed(tab, ws, ["room"])
        ws = await afresh(server, ws)
        for code in ("unavailable", "unavailable"):
            again = await frame_of(ws)
            asked(again, "room")
            await reply(ws, again, code)
        await tab.until("() => window.ended.length >= 1")
        assert await tab.value("window.ended") == [["room", "unavailable"]]
        await next_is_the_pages_message(tab, ws)
