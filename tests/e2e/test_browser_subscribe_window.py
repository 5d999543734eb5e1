"""The browser client hands a channel's messages to its subscription's onMessage from the
moment it reads the server's reply to the subscribe (the messages right behind it too)
until it reads the reply to the unsubscribe (the server sent those before the leave).

Before, its unsubscribe dropped the subscription's onMessage before the request was sent:
a message of the channel the server sent before the leave reached the "message" listeners,
with nothing to tell it from a direct message. (The subscribe's side held already: the
page records a subscription in the reply's own task, before the next frame is read; the
tests below keep it so.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from tests.e2e.test_browser_v2 import (
    ScriptedV2Server,
    Tab,
    frame_of,
    opened_tab,
    opened_with_history,
)
from tests.e2e.test_browser_v2 import v2_server as v2_server  # (the fixture)
from tests.support.browser import Page
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# Subscribes to `channel` (with presence when asked) without awaiting it; its onMessage
# records each message in window.routed.
SUBSCRIBE = """([channel, presence]) => {
  window.routed = [];
  window.subscribing = window.conn.subscribe(channel, (data) => window.routed.push(data),
                                             { presence });
}"""


def reply(request: dict[str, Any]) -> str:
    return json.dumps({"type": "reply", "id": request["id"],
                       "result": {"channel": request["channel"]}})


def message(data: str, channel: str | None = None, offset: int | None = None) -> str:
    """A message frame: direct, of `channel`, or (with `offset`) of its g: stream."""
    body: dict[str, Any] = {"type": "message", "data": data}
    if offset is not None:
        body.update(stream=f"g:{channel}", offset=offset, epoch="e")
    elif channel is not None:
        body["channel"] = channel
    return json.dumps(body)


async def send_at_once(ws: ServerConnection, frames: list[str]) -> None:
    """Write `frames` to the socket in one write: the page reads them back to back."""
    async with ws.send_context():
        for frame in frames:
            ws.protocol.send_text(frame.encode())


async def opened(page: Page, server: ScriptedV2Server,
                 history: bool) -> tuple[Tab, ServerConnection]:
    return await (opened_with_history(page, server) if history else opened_tab(page, server))


@pytest.mark.parametrize("history", [False, True], ids=["no history", "history"])
async def test_messages_right_behind_the_subscribe_reply_go_to_on_message(
        page: Page, history: bool) -> None:
    """A busy channel: its traffic, and its presence state, follow the reply at once."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened(page, server, history)
        await page.evaluate(SUBSCRIBE, ["room", True])
        request = await frame_of(ws)
        assert (request["type"], request["presence"]) == ("subscribe", True)
        state = json.dumps({"type": "presence_state", "channel": "room", "presence": {
            "bob": [{"client_id": "bob", "meta": {}}]}})
        await send_at_once(ws, [
            reply(request), message("room-0", "room", 1 if history else None), state,
            *(message(f"room-{n}", "room", n + 1 if history else None) for n in (1, 2)),
            message("direct")])
        await tab.wait_events("message", 1)
        assert await tab.value("window.routed") == ["room-0", "room-1", "room-2"]
        assert [data for data, _ in await tab.events("message")] == ["direct"]
        assert await tab.value("window.conn.presence('room').count()") == 1
        await page.evaluate("window.subscribing")


@pytest.mark.parametrize("history", [False, True], ids=["no history", "history"])
async def test_messages_sent_before_the_unsubscribe_reply_go_to_on_message(
        page: Page, history: bool) -> None:
    async with ScriptedV2Server() as server:
        tab, ws = await opened(page, server, history)
        await page.evaluate(SUBSCRIBE, ["room", False])
        await ws.send(reply(await frame_of(ws)))
        await page.evaluate("window.subscribing")
        await page.evaluate("() => { window.leaving = window.conn.unsubscribe('room'); }")
        leave = await frame_of(ws)
        assert (leave["type"], leave["channel"]) == ("unsubscribe", "room")
        # after the reply: a membership of the application's own (join_group), no more the
        # subscription's
        await send_at_once(ws, [message("before the leave", "room", 1 if history else None),
                                reply(leave),
                                message("after the leave", "room", 2 if history else None)])
        await tab.wait_events("message", 1)
        await page.evaluate("window.leaving")
        assert await tab.value("window.routed") == ["before the leave"]
        assert [data for data, _ in await tab.events("message")] == ["after the leave"]


async def test_the_server_ending_the_channel_while_the_page_leaves_it_ends_the_routing(
        page: Page) -> None:
    """An "unsubscribed" frame says no message of the membership follows: one read after
    it, before the unsubscribe's reply, is another membership's."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        await page.evaluate(SUBSCRIBE, ["room", False])
        await ws.send(reply(await frame_of(ws)))
        await page.evaluate("window.subscribing")
        await page.evaluate("() => { window.leaving = window.conn.unsubscribe('room'); }")
        leave = await frame_of(ws)
        await send_at_once(ws, [
            json.dumps({"type": "unsubscribed", "channel": "room", "reason": "server"}),
            message("joined again", "room"), reply(leave)])
        await tab.wait_events("message", 1)
        await page.evaluate("window.leaving")
        assert await tab.value("window.routed") == []
        assert [data for data, _ in await tab.events("message")] == ["joined again"]


async def test_a_busy_channel_never_reaches_the_message_listeners(
        page: Page, v2_server: UvicornProcess) -> None:
    """The same against a real server: the channel carries messages all along while the
    page subscribes and unsubscribes five times."""
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    await asyncio.to_thread(v2_server.post, "/admin/pump/public:busy")
    try:
        for _ in range(5):
            await page.evaluate(SUBSCRIBE, ["public:busy", False])
            await page.evaluate("window.subscribing")
            await tab.until("() => window.routed.length > 0")  # the channel carries messages
            await page.evaluate("window.conn.unsubscribe('public:busy')")
    finally:
        sent = (await asyncio.to_thread(v2_server.post, "/admin/pump_stop"))["sent"]
    assert sent > 0
    reached = await asyncio.to_thread(v2_server.post, "/admin/send_user/alice",
                                      {"message": "direct"})
    assert reached == {"reached": 1}
    await tab.wait_events("message", 1)
    assert [data for data, _ in await tab.events("message")] == ["direct"]
