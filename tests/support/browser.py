"""Headless Chromium for browser tests, and a WebSocket server a test scripts frame by frame.

The browser is the system Chromium (Debian's `chromium` package) driven by the Python
`playwright` package, whose driver ships in its wheel: `playwright install` is never needed.
Playwright starts every browser with a fresh temporary profile (its own --user-data-dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from stabilizer.fastapi import BROWSER_PARTS, STATIC

__all__ = ["Browser", "Page", "ScriptedServer", "chromium", "chromium_binary"]

# Without the background-networking flags Chromium keeps calling home on a closed network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

BLANK_PAGE = b"<!doctype html><meta charset=utf-8><title>stabilizer.js test</title>"


def chromium_binary() -> str:
    """Return the system Chromium, or raise (installed by .ci/run with apt-get)."""
    override = os.environ.get("CHROMIUM_BINARY")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium not found: apt-get install chromium")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Launch headless Chromium; close it on exit."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_binary(), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def checked_page(browser: Browser, **options: Any) -> AsyncIterator[Page]:
    """A page in a fresh browser context (`options` for the context); any uncaught error
    on the page fails the test when it closes."""
    context = await browser.new_context(**options)
    opened = await context.new_page()
    errors: list[object] = []
    opened.on("pageerror", lambda error: errors.append(error))
    yield opened
    await context.close()
    assert errors == [], f"uncaught errors on the page: {errors}"


class ScriptedServer:
    """Serves a blank page and the browser client (/stabilizer.js and its parts,
    /stabilizer/{name}.js) over HTTP, and hands each WebSocket to the test.

    The test plays the stabilizer server by hand: `await server.accept()` returns the next
    connection (its request path tells which query parameters the client sent), then the
    test sends frames and closes it with whatever code it wants to check.
    """

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        """The loopback port the server listens on."""
        assert self._server is not None, "not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def base(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """ws://127.0.0.1:<port>"""
        return f"ws://127.0.0.1:{self.port}"

    async def accept(self, timeout: float = 5.0) -> ServerConnection:
        """Return the next WebSocket the browser opened (waiting at most `timeout`)."""
        async with asyncio.timeout(timeout):
            return await self.connections.get()

    async def _handle(self, ws: ServerConnection) -> None:
        await self.connections.put(ws)
        await ws.wait_closed()  # the test owns the connection until it is closed

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        files: dict[str, tuple[bytes, str]] = {
            "/": (BLANK_PAGE, "text/html; charset=utf-8"),
            "/stabilizer.js": (Path(STATIC, "stabilizer.js").read_bytes(), "text/javascript"),
            **{f"/stabilizer/{name}.js": (part.read_bytes(), "text/javascript")
               for name, part in BROWSER_PARTS.items()},
        }
        if request.path not in files:
            return connection.respond(404, "not found\n")
        body, content_type = files[request.path]
        response = connection.respond(200, "")
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = content_type
        response.headers["Content-Length"] = str(len(body))
        response.headers["Cache-Control"] = "no-store"
        response.body = body
        return response

    async def __aenter__(self) -> ScriptedServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._http)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
