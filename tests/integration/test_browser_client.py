"""The browser client over HTTP (router(manager)): GET /stabilizer.js and the parts it
imports, GET /stabilizer/{name}.js, served from a fixed list, open like /health, and
reachable under a prefix by the relative URLs the modules import each other with."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import BROWSER_PARTS, STATIC, router

# The module a statement at the start of a line imports or re-exports from (`import {...}
# from "./x.js"`, `export {...} from "./x.js"`, `import "./x.js"`); comments are skipped.
SPECIFIER = re.compile(r"""^(?:import|export)\b[^;"']*?\bfrom\s*["']([^"']+)["']"""
                       r"""|^import\s*["']([^"']+)["']""", re.MULTILINE)
ENTRY = "/ops/stabilizer.js"


def refuse_everyone() -> None:
    raise HTTPException(401, "who are you?")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with the router under /ops, guarded by a dependency that refuses
    every request it applies to."""
    app = FastAPI()
    manager = WebSocketConnectionManager(WebSocketConfig())
    app.include_router(router(manager, prefix="/ops", dependencies=[Depends(refuse_everyone)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        yield client


async def get_script(http: httpx.AsyncClient, path: str) -> str:
    response = await http.get(path)
    assert response.status_code == 200, path
    assert response.headers["content-type"].startswith("text/javascript"), path
    return response.text


def test_the_client_has_parts_and_none_is_long() -> None:
    assert {"connection", "frames", "calls", "device"} <= set(BROWSER_PARTS)
    for path in [STATIC / "stabilizer.js", *BROWSER_PARTS.values()]:
        assert len(path.read_text().splitlines()) < 400, path.name


async def test_the_client_and_each_part_are_served_as_javascript_past_the_guard(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.get("/ops/stats")).status_code == 401  # the guard is on
    assert await get_script(http, ENTRY) == (STATIC / "stabilizer.js").read_text()
    for name, path in BROWSER_PARTS.items():
        assert await get_script(http, f"/ops/stabilizer/{name}.js") == path.read_text()


@pytest.mark.parametrize("path", [
    "/ops/stabilizer/nope.js",
    "/ops/stabilizer/stabilizer.js",             # the entry is no part
    "/ops/stabilizer/Frames.js",
    "/ops/stabilizer/frames",
    "/ops/stabilizer/frames.js/x",
    "/ops/stabilizer/.js",
    "/ops/stabilizer/../config.py",              # httpx removes the dot segments itself
    "/ops/stabilizer/%2e%2e/config.py",          # reaches the app as /stabilizer/../config.py
    "/ops/stabilizer/%2e%2e%2fconfig.js",
    "/ops/stabilizer/..%2F..%2Ffastapi.js",
    "/ops/stabilizer/%2e%2e.js",                 # the name ".."
    "/ops/stabilizer/frames.js%00",
])
async def test_anything_but_a_listed_part_is_not_found(http: httpx.AsyncClient,
                                                       path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404
    assert "javascript" not in response.headers.get("content-type", "")


async def test_every_relative_import_resolves_to_a_served_module(
    http: httpx.AsyncClient,
) -> None:
    """Follow the imports from /stabilizer.js as a browser would (each specifier against
    the importing module's URL): each is relative and served, and they reach every part."""
    reached: set[str] = set()
    pending = [ENTRY]
    while pending:
        path = pending.pop()
        if path in reached:
            continue
        reached.add(path)
        for match in SPECIFIER.finditer(await get_script(http, path)):
            specifier = match[1] or match[2]
            assert specifier.startswith(("./", "../")), f"{path} imports {specifier!r}"
            pending.append(urljoin(path, specifier))
    parts = {f"/ops/stabilizer/{name}.js" for name in BROWSER_PARTS}
    assert reached == {ENTRY, *parts}


async def test_the_modules_stay_out_of_the_openapi_schema(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if "stabilizer" in path]
