"""The dashboard in headless Chromium, served by one of three uvicorn replicas that share a
redis-server: it shows every replica's clients, rates and groups, finds a client on another
replica and disconnects it, and sees a killed replica go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, router
from tests.support.browser import Page, chromium
from tests.support.clients import ClientConnection, closed_with, open_client
from tests.support.inproc_uvicorn import served
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import ROOT, UvicornProcess, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

WAIT_MS = 15_000  # the bound on every wait for the page; none is a sleep
KEY = "dashboard-e2e-key"
NODES = ("dash-0", "dash-1", "dash-2")
#: Where the screenshots go (kept after the run); docs/dashboard.png is a copy of one.
ARTIFACTS = Path(os.environ.get("DASHBOARD_ARTIFACTS",
                                Path(tempfile.gettempdir()) / "stabilizer-artifacts"))


def replicas(redis: RedisServer) -> list[UvicornProcess]:
    namespace = f"dash{os.getpid()}"
    return start_all([UvicornProcess(app="tests.e2e.dashboard_app:app", env={
        "STABILIZER_REDIS_URL": redis.url, "STABILIZER_NAMESPACE": namespace,
        "STABILIZER_NODE_ID": node_id, "STABILIZER_NODE_TTL": "2",
        "STABILIZER_HEARTBEAT_INTERVAL": "3600", "STABILIZER_HEARTBEAT_TIMEOUT": "3600",
        "DASHBOARD_KEY": KEY}) for node_id in NODES])


@contextlib.asynccontextmanager
async def chatter(client: ClientConnection) -> AsyncIterator[None]:
    """Keep `client` saying something (a broadcast to the others) while the body runs."""
    async def talk() -> None:
        while True:
            await client.send("tick")
            await asyncio.sleep(0.1)  # a pace for the traffic, not a synchronisation

    task = asyncio.create_task(talk())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(page: Page, expression: str, arg: Any = None) -> None:
    await page.wait_for_function(expression, arg=arg, timeout=WAIT_MS, polling=50)


SHOWS = """([counts, total]) => {
  const rows = document.querySelectorAll("#nodes tbody tr[data-node]");
  if (rows.length !== Object.keys(counts).length) return false;
  for (const [node, n] of Object.entries(counts)) {
    const row = document.querySelector(`tr[data-node="${node}"]`);
    if (!row || row.querySelector('[data-field="connections"]').textContent !== String(n)
        || row.querySelector('[data-field="state"]').textContent !== "running") return false;
  }
  return document.getElementById("cluster-connections").textContent === String(total);
}"""

RATE = """([node, which]) => {  // which: 0 messages in/s, 1 deliveries/s
  const cell = document.querySelector(`tr[data-node="${node}"] [data-field="rates"]`);
  return cell !== null && parseFloat(cell.textContent.split(" · ")[which]) > 0;
}"""

SAMPLES = """(n) => [...document.querySelectorAll("#nodes tbody tr[data-node]")]
  .every((row) => Number(row.dataset.samples) >= n)"""

MEMBERS = """([group, n]) => {
  const cell = document.querySelector(`tr[data-group="${group}"] [data-field="members"]`);
  return cell !== null && cell.textContent === String(n);
}"""


async def test_the_dashboard_follows_three_replicas(redis_server: RedisServer) -> None:
    procs = replicas(redis_server)
    clients: dict[str, ClientConnection] = {}
    try:
        for name, proc in (("ann", 0), ("amy", 0), ("ava", 0), ("bob", 1), ("bea", 1),
                           ("cat", 2)):
            clients[name] = (await open_client(f"{procs[proc].ws}/ws/{name}"))[0]
        for name in ("ann", "bob", "cat"):
            await asyncio.to_thread(procs[0].post, f"/admin/join/{name}/room")
        status, _ = await asyncio.to_thread(procs[0].get, "/ops/dashboard")
        assert status == 401  # the guard: no key, no page
        async with chromium() as browser, chatter(clients["ann"]):
            context = await browser.new_context(viewport={"width": 1100, "height": 620},
                                                extra_http_headers={"x-ops-key": KEY})
            page = await context.new_page()
            errors: list[object] = []
            page.on("pageerror", lambda error: errors.append(error))
            await page.goto(f"{procs[0].base}/ops/dashboard?interval=300")

            await until(page, SHOWS, [{"dash-0": 3, "dash-1": 2, "dash-2": 1}, 6])
            await until(page, MEMBERS, ["room", 3])
            await until(page, RATE, ["dash-0", 0])  # ann talks on dash-0...
            await until(page, RATE, ["dash-1", 1])  # ...and bob and bea hear her on dash-1
            await until(page, SAMPLES, 5)  # a few points in every plot for the screenshot
            await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            await page.fill("#query", "cat")
            await page.click("#search button")
            match = page.locator('#results tr[data-client="cat"]')
            await match.wait_for(timeout=WAIT_MS)
            assert await match.locator('[data-field="node"]').text_content() == "dash-2"
            await match.locator("button").click()
            assert await closed_with(clients["cat"]) == 1000  # closed on another replica
            assert await match.locator('[data-field="outcome"]').text_content() == (
                "disconnected")
            await until(page, SHOWS, [{"dash-0": 3, "dash-1": 2, "dash-2": 0}, 5])

            await asyncio.to_thread(procs[1].kill)  # no goodbye: its deadline runs out
            await until(page, SHOWS, [{"dash-0": 3, "dash-2": 0}, 3])
            await until(page, MEMBERS, ["room", 1])
            await page.screenshot(path=str(ARTIFACTS / "dashboard-after-kill.png"))
            assert errors == [], f"uncaught errors on the page: {errors}"
            await context.close()
        if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
            await asyncio.to_thread(shutil.copyfile, ARTIFACTS / "dashboard.png",
                                    ROOT / "docs" / "dashboard.png")
    finally:
        for ws in clients.values():
            with contextlib.suppress(Exception):
                await ws.close()
        for proc in procs:
            proc.stop()


@pytest.mark.parametrize(("asked", "polls_every"), [("1", 250), ("-1", 2000), ("x", 2000),
                                                    ("300", 300)])
async def test_the_page_polls_no_more_often_than_every_250_ms(
        monkeypatch: pytest.MonkeyPatch, asked: str, polls_every: int) -> None:
    """A link with ?interval=1 (or -1) made an operator's tab fetch the data some 85 times a
    second, each fetch several Redis reads; the delay the page asks for is recorded (no
    time is measured)."""
    manager = WebSocketConnectionManager(WebSocketConfig())
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(router(manager, prefix="/ops", dashboard=True,
                              allow_anonymous_dashboard=True))  # loopback only
    async with served(app, "websockets-sansio", monkeypatch) as server, chromium() as browser:
        page = await browser.new_page()
        await page.add_init_script("""
            window.delays = [];
            const real = window.setTimeout;
            window.setTimeout = (fn, ms, ...rest) => {
                window.delays.push(ms);
                return real(fn, ms, ...rest);
            };
        """)
        await page.goto(f"http://127.0.0.1:{server.port}/ops/dashboard?interval={asked}")
        await page.wait_for_function("() => window.delays.length > 0", timeout=WAIT_MS)
        assert await page.evaluate("window.delays[0]") == polls_every
