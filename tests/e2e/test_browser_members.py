"""Issue 12: a live member list in the browser. The presence helper (stabilizer/presence.js)
on its own in a blank page, and the chat example's member list in two tabs of one browser,
each tab a different user: on two replicas sharing one Redis, and on one replica with the
embedded default.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import Page, ScriptedServer
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import ROOT, UvicornProcess, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ARTIFACTS = ROOT / "tests" / "artifacts"
WAIT_MS = 10_000  # the bound on every wait for a page; none is a sleep
CHAT_SECRET = "a-chat-secret-for-the-member-list-tests"
_RUN = itertools.count(1)


@pytest.fixture
def page_options() -> dict[str, Any]:
    return {"viewport": {"width": 900, "height": 700}}  # the size of the saved screenshots


# --- presence.js on its own -----------------------------------------------------------------

# Applies each frame (JSON text, parsed as the connection parses a frame) to a fresh Presence;
# returns (as JSON text: playwright's own serialisation drops a "__proto__" key) what list(),
# count() and every change listener saw.
APPLY = """async (text) => {
  const { Presence } = await import("/stabilizer/presence.js");
  const presence = new Presence("room");
  const changes = [];
  presence.onChange((joins, leaves) => changes.push([Object.keys(joins), Object.keys(leaves)]));
  for (const frame of JSON.parse(text)) presence.apply(frame);
  const list = presence.list();
  return JSON.stringify({ keys: Object.keys(list), list, count: presence.count(), changes });
}"""


def item(client_id: str, **meta: Any) -> dict[str, Any]:
    return {"client_id": client_id, "meta": meta}


async def apply(page: Page, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """What a fresh Presence holds and reported after `frames` (of channel "room")."""
    text = json.dumps([{"channel": "room", **frame} for frame in frames])
    result: dict[str, Any] = json.loads(await page.evaluate(APPLY, text))
    return result


async def test_a_user_named_like_an_object_property_is_listed(page: Page) -> None:
    """A user id is user input: "__proto__" (a valid chat name) is a key like any other."""
    frames = [
        {"type": "presence_state",
         "presence": {"__proto__": [item("__proto__/a")], "ann": [item("ann/b")]}},
        {"type": "presence_diff", "joins": {"constructor": [item("constructor/c")]},
         "leaves": {"ann": [item("ann/b")]}},
        {"type": "presence_diff", "joins": {}, "leaves": {"__proto__": [item("__proto__/a")]}},
    ]
    async with ScriptedServer() as server:
        await page.goto(server.base + "/")
        first = await apply(page, frames[:1])
        assert first["keys"] == ["__proto__", "ann"]
        assert first["list"]["__proto__"] == [item("__proto__/a")]
        assert first["count"] == 2
        assert first["changes"] == [[["__proto__", "ann"], []]]
        every = await apply(page, frames)
        assert every["keys"] == ["constructor"]
        assert every["count"] == 1
        assert every["changes"][1:] == [[["constructor"], ["ann"]], [[], ["__proto__"]]]


# --- the chat example's member list, two users in two tabs on two replicas ------------------


@pytest.fixture
def chat_replicas(request: pytest.FixtureRequest) -> Iterator[list[UvicornProcess]]:
    """The chat example served by two replicas on one Redis namespace (param "redis"), or
    by one on the embedded default (param "memory"); without history either way, so a
    closed tab leaves the room at once instead of staying listed while it could resume."""
    env = {"STABILIZER_HEARTBEAT_INTERVAL": "3600", "STABILIZER_HEARTBEAT_TIMEOUT": "3600",
           "CHAT_JWT_SECRET": CHAT_SECRET}
    count = 1
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        env.update(STABILIZER_REDIS_URL=redis.url,
                   STABILIZER_NAMESPACE=f"members{os.getpid()}-{next(_RUN)}")
        count = 2
    procs = [UvicornProcess(app="examples.chat.app:app",
                            env={**env, "STABILIZER_NODE_ID": f"replica-{index}"})
             for index in range(count)]
    start_all(procs)  # a failure stops the ones it started, then raises
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def wait_members(page: Page, *lines: str) -> None:
    """Wait (bounded) until the page's member list reads `lines`, in order."""
    await page.wait_for_function(
        """(want) => {
            const have = [...document.querySelectorAll("#members li")].map((e) => e.textContent);
            return JSON.stringify(have) === JSON.stringify(want);
        }""", arg=list(lines), timeout=WAIT_MS, polling=20)


async def wait_open_on(page: Page, node_id: str) -> None:
    await page.wait_for_function(
        """(node) => document.getElementById("state").textContent === "open"
                     && document.getElementById("node").textContent === node""",
        arg=node_id, timeout=WAIT_MS, polling=20)


async def refusal(page: Page, call: str) -> str:
    """The error code the page's connection gets for `call` (a JS expression of `chat`)."""
    code: str = await page.evaluate(
        f"async () => {{ const chat = window.chat; try {{ await {call}; return 'allowed'; }}"
        " catch (error) { return error.code; } }")
    return code


@pytest.mark.parametrize("chat_replicas", [pytest.param("redis", marks=pytest.mark.redis),
                                           "memory"], indirect=True)
async def test_two_tabs_show_the_lobbys_members_and_their_status_live(
    page: Page, chat_replicas: list[UvicornProcess],
) -> None:
    """With Redis, ann's tab is on one replica and bob's on the other."""
    second = await page.context.new_page()
    errors: list[object] = []
    second.on("pageerror", lambda error: errors.append(error))
    ann_on, bob_on = chat_replicas[0], chat_replicas[-1]
    await page.goto(f"{ann_on.base}/?name=ann")
    await second.goto(f"{bob_on.base}/?name=bob")
    for tab, proc in ((page, ann_on), (second, bob_on)):
        await wait_open_on(tab, proc.env["STABILIZER_NODE_ID"])
    for tab in (page, second):
        await wait_members(tab, "ann online", "bob online")

    await second.fill("#text", "hello ann")  # bob types: an input event, status "typing"
    for tab in (page, second):
        await wait_members(tab, "ann online", "bob typing")
    assert await page.get_attribute("#members li:nth-child(2) .status", "class") \
        == "status typing"
    if len(chat_replicas) == 2:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-live-members.png"), full_page=True)

    await second.press("#text", "Enter")  # sent: "online" again
    for tab in (page, second):
        await wait_members(tab, "ann online", "bob online")
    await page.wait_for_function(
        """() => [...document.querySelectorAll("#log .msg")]
                   .some((e) => e.textContent === "bob: hello ann")""",
        timeout=WAIT_MS, polling=20)

    # what a page sends is checked: an unknown status or another room is refused, and the
    # connection and the list stay as they were
    assert await refusal(second, "chat.rpc('status', 'asleep')") == "bad_status"
    assert await refusal(second, "chat.rpc('status', {status: 'typing'})") == "bad_status"
    assert await refusal(second, "chat.subscribe('elsewhere')") == "forbidden"
    assert await second.text_content("#state") == "open"

    await second.close()  # bob's tab goes: he leaves ann's list
    await wait_members(page, "ann online")
    assert await page.text_content("#state") == "open"
    assert errors == [], f"uncaught errors on bob's page: {errors}"
