"""The browser client (protocol v2, headless Chromium) against a scripted server that sends
`resume` and `unsubscribed` frames it cannot act on: each is dropped with a warning in the
console, as a `message` frame without data is, and the application never sees it. Before,
{"type":"resume"} was emitted as a `resume` event (recovered undefined, failed missing),
and {"type":"unsubscribed"} or one with an object for its channel as `unsubscribed`."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import ConsoleMessage

from tests.e2e.test_browser_v2 import ScriptedV2Server, opened_tab
from tests.support.browser import Page

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MALFORMED = [
    {"type": "resume"},
    {"type": "resume", "recovered": "yes", "replayed": 0, "failed": []},
    {"type": "resume", "recovered": True},
    {"type": "resume", "recovered": False, "replayed": -1, "failed": []},
    {"type": "resume", "recovered": False, "replayed": 0, "failed": "all"},
    {"type": "resume", "recovered": False, "replayed": 0, "failed": [5]},
    {"type": "unsubscribed"},
    {"type": "unsubscribed", "channel": {}},
    {"type": "unsubscribed", "channel": 5, "reason": "server"},
]


async def test_resume_and_unsubscribed_frames_it_cannot_act_on_are_dropped(
        page: Page) -> None:
    warnings: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "warning":
            warnings.append(message.text)

    page.on("console", console)
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        for frame in MALFORMED:
            await ws.send(json.dumps(frame))
        await ws.send(json.dumps({"type": "message", "data": "after"}))
        await tab.wait_events("message", 1)  # the frames before it were read
        assert await tab.events("resume") == []
        assert await tab.events("unsubscribed") == []
        dropped = [text for text in warnings if text.startswith("stabilizer: dropped")]
        assert len(dropped) == len(MALFORMED), warnings
        # well-formed ones still reach the application
        resume = {"type": "resume", "recovered": False, "replayed": 0, "failed": ["all"]}
        ended = {"type": "unsubscribed", "channel": "room", "reason": "server"}
        await ws.send(json.dumps(resume))
        await ws.send(json.dumps(ended))
        assert await tab.wait_events("unsubscribed", 1) == [[ended]]
        assert await tab.events("resume") == [[resume]]
        await ws.close()
