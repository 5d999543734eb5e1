"""The browser client's waits and numeric options, in headless Chromium: a browser fires a
timer of more than 2^31-1 ms (or Infinity) at once, so the client sets none that long
(Infinity: no timer), and connect() refuses a numeric option that is no such number."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_browser import Tab, recv, session_frame
from tests.e2e.test_browser_v2 import ScriptedV2Server, frame_of, opened_tab
from tests.support.browser import Page, ScriptedServer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MAX_TIMER_MS = 2**31 - 1
DAYS_30 = 30 * 86_400_000
INFINITY = float("inf")  # (Playwright hands it to the page as Infinity)

# Records the delay of every timer the page sets (window.delays), before any script runs.
SPY = """(() => {
  const real = window.setTimeout;
  window.delays = [];
  window.setTimeout = (fn, ms, ...args) => {
    window.delays.push(ms === Infinity ? "Infinity" : ms);
    return real(fn, ms, ...args);
  };
})()"""


async def test_requests_waiting_longer_than_a_timer_can_get_their_replies(page: Page) -> None:
    """Before, each of these calls was rejected with "timeout" at once, although sent."""
    await page.add_init_script(SPY)
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        await page.evaluate("""(days) => {
          const settled = (promise) => promise.then((value) => ["ok", value ?? null],
                                                    (err) => ["error", err.code]);
          window.calls = Promise.all([
            settled(window.conn.rpc("add", null, { timeoutMs: days })),
            settled(window.conn.rpc("add", null, { timeoutMs: Infinity })),
            settled(window.conn.subscribe("room", null, { timeoutMs: Infinity })),
            settled(window.conn.publish("room", "hi", { timeoutMs: days })),
            settled(window.conn.unsubscribe("room", { timeoutMs: Infinity })),
          ]);
        }""", DAYS_30)
        for answer in (3, 4, {"channel": "room"}, None, None):
            request = await frame_of(ws)
            await ws.send(json.dumps({"type": "reply", "id": request["id"], "result": answer}))
        assert await page.evaluate("window.calls") == [
            ["ok", 3], ["ok", 4], ["ok", None], ["ok", None], ["ok", None]]
        assert await longest_timer(page) == MAX_TIMER_MS
        await tab.value("window.conn.close()")


async def test_backoff_and_advice_past_a_timers_range_wait_as_long_as_one_can(
        page: Page) -> None:
    """A backoffCapMs or maxAdviceMs over 2^31-1 made the reconnect fire at once (hammering
    a failing server); a probeTimeoutMs of Infinity dropped a link on its first probe."""
    await page.add_init_script(SPY)
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, backoffBaseMs=2**40, backoffCapMs=2**41,
                             maxAdviceMs=INFINITY, probeTimeoutMs=INFINITY)
        ws = await server.accept()
        await ws.send(session_frame("t1", heartbeat_interval=0.05))
        assert await recv(ws) == '{"type":"ping"}'  # then no probe deadline
        await ws.close(1012, json.dumps({"retry_ms": DAYS_30}))
        await tab.wait_state("reconnecting")
        [_, (_, info)] = await tab.events("state")
        assert info["delay_ms"] == MAX_TIMER_MS
        assert await longest_timer(page) == MAX_TIMER_MS
        assert server.connections.empty()
        await tab.page.evaluate("window.conn.close()")
        delay_ms = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const options = { backoffBaseMs: 2 ** 40, backoffCapMs: 2 ** 41, maxAdviceMs: 0 };
            return Math.max(...[...Array(50).keys()].map(
              () => f.retryDelay(1011, "", 5, options)));
        }""")
        assert 0 <= delay_ms <= MAX_TIMER_MS


async def longest_timer(page: Page) -> Any:
    """The longest delay the page asked setTimeout for ("Infinity" when it asked for that)."""
    delays = await page.evaluate("window.delays")
    return "Infinity" if "Infinity" in delays else max(delays)


@pytest.mark.parametrize(("options", "named"), [
    ({"maxQueue": -1}, "maxQueue"),
    ({"maxQueue": 1.5}, "maxQueue"),
    ({"backoffBaseMs": "250"}, "backoffBaseMs"),
    ({"backoffBaseMs": INFINITY}, "backoffBaseMs"),
    ({"backoffCapMs": float("nan")}, "backoffCapMs"),
    ({"stableAfterMs": -5}, "stableAfterMs"),
    ({"maxAttempts": 2.5}, "maxAttempts"),
    ({"maxAdviceMs": None}, "maxAdviceMs"),
    ({"probeTimeoutMs": -1}, "probeTimeoutMs"),
    ({"connectTimeoutMs": "10s"}, "connectTimeoutMs"),
])
async def test_a_numeric_option_that_is_no_such_number_is_refused(
        page: Page, options: dict[str, Any], named: str) -> None:
    async with ScriptedServer() as server:
        await page.goto(server.base + "/")
        error = await page.evaluate("""async (options) => {
            const { connect } = await import("/stabilizer.js");
            try { connect("/ws/alice", options); } catch (e) { return [e.name, e.message]; }
        }""", options)
        assert error is not None, f"{options} was taken"
        name, message = error
        assert name == "TypeError"
        assert message.startswith(f"stabilizer: {named} must be ")
        assert server.connections.empty()


async def test_infinity_is_taken_where_it_means_no_bound(page: Page) -> None:
    async with ScriptedServer() as server:
        tab = await Tab.open(page, server, maxQueue=INFINITY, backoffCapMs=INFINITY,
                             stableAfterMs=INFINITY, maxAttempts=INFINITY,
                             maxAdviceMs=INFINITY, probeTimeoutMs=INFINITY,
                             connectTimeoutMs=INFINITY, backoffBaseMs=0)
        ws = await server.accept()
        await ws.send(session_frame("t1"))
        await tab.wait_state("open")
        await tab.page.evaluate("window.conn.close()")


async def test_a_request_with_a_timeout_that_is_no_number_is_not_sent(page: Page) -> None:
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        refused = await page.evaluate("""() => Promise.all([-1, NaN, "5"].map(
            (timeoutMs) => window.conn.rpc("add", null, { timeoutMs }).then(
              () => "ok", (err) => [err.name, err.message])))""")
        assert [name for name, _ in refused] == ["TypeError"] * 3
        assert all(message.startswith("stabilizer: timeoutMs must be ")
                   for _, message in refused)
        await page.evaluate("window.conn.send('after')")
        assert await frame_of(ws) == {"type": "message", "data": "after"}  # none was sent
        await tab.value("window.conn.close()")

