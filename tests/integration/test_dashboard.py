"""The dashboard's endpoints (router(manager, dashboard=True)): the guard, the cluster view
built from the reports nodes write with their keepalive, search and disconnect anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException

from stabilizer import (
    ConfigError,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.fastapi import router
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0,
         "node_ttl": 1.0}  # a keepalive, and so a report, every third of a second
Nodes = Callable[[str], WebSocketConnectionManager]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def nodes(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Nodes]:
    """Started managers sharing one store (a memory hub, or a real Redis)."""
    hub = MemoryHub()
    made: list[WebSocketConnectionManager] = []
    redis = ({"redis_url": request.getfixturevalue("redis_url")}
             if request.param == "redis" else {})

    def node(node_id: str) -> WebSocketConnectionManager:
        config = WebSocketConfig(**QUIET, **redis, node_id=node_id,  # type: ignore[arg-type]
                                 namespace=namespace)
        manager = WebSocketConnectionManager(
            config, backend=None if redis else MemoryBackend(hub))
        made.append(manager)
        return manager

    yield node
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


def require_key(x_key: str | None = Header(default=None)) -> None:
    if x_key is None:
        raise HTTPException(401, "who are you?")
    if x_key != "k":
        raise HTTPException(403, "not you")


def client_for(manager: WebSocketConnectionManager, *, dashboard: bool = True,
               key: str | None = "k") -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(router(manager, prefix="/ops", dashboard=dashboard,
                              dependencies=[Depends(require_key)]))
    headers = {} if key is None else {"x-key": key}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://test", headers=headers)


async def data_until(http: httpx.AsyncClient, check: Callable[[dict[str, Any]], bool],
                     timeout: float = 10.0) -> dict[str, Any]:
    """Poll /ops/dashboard/data until `check` holds (bounded); return that snapshot."""
    data: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                response = await http.get("/ops/dashboard/data")
                assert response.status_code == 200
                data = response.json()
                if check(data):
                    return data
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"the dashboard never showed what was expected; last: {data}")


def row(data: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next((n for n in data["nodes"] if n["node_id"] == node_id), {})


GUARDED = [("GET", "/ops/dashboard"), ("GET", "/ops/dashboard/data"),
           ("GET", "/ops/dashboard/clients?q=x"), ("POST", "/ops/dashboard/disconnect")]


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 403)])
async def test_the_guard_refuses_the_page_and_its_data(nodes: Nodes, key: str | None,
                                                      status: int) -> None:
    a = nodes("a")
    await a.start()
    ann = FakeSocket("ann")
    await a.connect("ann", ann)
    async with client_for(a, key=key) as http:
        for method, path in GUARDED:
            response = await http.request(method, path, json={"client_id": "ann"})
            assert response.status_code == status, (method, path)
            assert "ann" not in response.text, (method, path)
        script = await http.get("/ops/dashboard.js")  # code only, like /stabilizer.js
        assert script.status_code == 200
        assert "dashboard/data" in script.text
    assert ann.closed is None  # the refused disconnect closed nobody
    assert a.is_connected("ann")


@pytest.mark.parametrize("dependencies", [None, []])
def test_a_dashboard_without_a_guard_is_refused_when_the_router_is_made(
        dependencies: list[Any] | None) -> None:
    """Unguarded, anyone who reached the router listed user ids and group names and closed
    clients on every replica (ending their sessions); nothing refused or warned."""
    manager = WebSocketConnectionManager(WebSocketConfig())
    with pytest.raises(ConfigError, match=r"dependencies=.*allow_anonymous_dashboard=True"):
        router(manager, dashboard=True, dependencies=dependencies)


async def test_the_named_opt_in_serves_the_dashboard_to_anyone(
        nodes: Nodes, caplog: pytest.LogCaptureFixture) -> None:
    a = nodes("a")
    await a.start()
    ann = FakeSocket("ann")
    await a.connect("ann", ann)
    app = FastAPI()
    with caplog.at_level("WARNING", logger="stabilizer.fastapi"):
        app.include_router(router(a, prefix="/ops", dashboard=True,
                                  allow_anonymous_dashboard=True))
    assert "open to anyone" in caplog.text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as http:
        found = await http.get("/ops/dashboard/clients", params={"q": "ann"})
        assert [m["client_id"] for m in found.json()["matches"]] == ["ann"]
        done = await http.post("/ops/dashboard/disconnect", json={"client_id": "ann"})
        assert done.json() == {"client_id": "ann", "disconnected": True}
    assert (await ann.wait_closed())[0] == 1000


async def test_an_unguarded_router_without_the_dashboard_serves_health_and_stats(
        nodes: Nodes) -> None:
    """/health, /stats (and /metrics) show counts and node ids, no client, user or group:
    they need no opt-in."""
    a = nodes("a")
    await a.start()
    await a.connect("ann", FakeSocket("ann"))
    app = FastAPI()
    app.include_router(router(a, prefix="/ops"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as http:
        for path in ("/ops/health", "/ops/stats"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert "ann" not in response.text, path
        assert (await http.get("/ops/dashboard/data")).status_code == 404


async def test_without_dashboard_there_is_none(nodes: Nodes) -> None:
    a = nodes("a")
    await a.start()
    async with client_for(a, dashboard=False) as http:
        for path in ("/ops/dashboard", "/ops/dashboard/data", "/ops/dashboard.js"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/ops/stats")).status_code == 200


async def test_the_page_is_self_contained(nodes: Nodes) -> None:
    a = nodes("a")
    await a.start()
    async with client_for(a) as http:
        page = await http.get("/ops/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="dashboard.js">' in page.text
    assert "http://" not in page.text  # nothing fetched from elsewhere
    assert "https://" not in page.text


async def test_the_page_may_not_be_framed_by_another_site(nodes: Nodes) -> None:
    """The page has a button that disconnects clients: framed by another site, under the
    operator's credentials, a click there could be stolen (clickjacking)."""
    a = nodes("a")
    await a.start()
    async with client_for(a) as http:
        page = await http.get("/ops/dashboard")
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy or "default-src 'self'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_the_view_shows_every_node_from_its_report(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    await b.connect("bob", FakeSocket("bob"))
    await b.connect("bea", FakeSocket("bea"))
    await b.join_group("bob", "room")
    await b.join_group("bea", "room")
    await a.connect("ann", FakeSocket("ann"))
    await a.join_group("ann", "room")
    await b.send_to_client("bob", "hello")
    async with client_for(a) as http:
        data = await data_until(http, lambda d: row(d, "b").get("connections") == 2
                                and row(d, "b").get("messages_out", 0) >= 1
                                and d["groups"] == [{"group": "room", "members": 3}])
    assert data["node_id"] == "a"
    assert data["cluster_connections"] == 3
    assert [n["node_id"] for n in data["nodes"]] == ["a", "b"]
    here, there = row(data, "a"), row(data, "b")
    assert here["self"] is True
    assert here["connections"] == 1
    assert there["self"] is False
    assert there["state"] == "running"
    assert there["outbox_frames"] == 0
    assert there["age"] >= 0


async def test_a_stopped_node_leaves_the_view(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    async with client_for(a) as http:
        await data_until(http, lambda d: row(d, "b").get("state") == "running")
        await b.graceful_shutdown(timeout=2.0)
        data = await data_until(http, lambda d: row(d, "b") == {})
    assert [n["node_id"] for n in data["nodes"]] == ["a"]


async def test_search_and_disconnect_a_client_on_another_node(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    await a.start()
    await b.start()
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    async with client_for(a) as http:
        found = (await http.get("/ops/dashboard/clients", params={"q": "bob"})).json()
        assert [(m["client_id"], m["node_id"]) for m in found["matches"]] == [("bob", "b")]
        none = (await http.get("/ops/dashboard/clients", params={"q": "nobody"})).json()
        assert none["matches"] == []
        form = await http.post("/ops/dashboard/disconnect", data={"client_id": "bob"})
        assert form.status_code == 415  # a cross-site form cannot close anyone
        missing = await http.post("/ops/dashboard/disconnect", json={"client": "bob"})
        assert missing.status_code == 422
        done = await http.post("/ops/dashboard/disconnect", json={"client_id": "bob"})
        assert done.json() == {"client_id": "bob", "disconnected": True}
        code, _ = await bob.wait_closed()
        assert code == 1000
        gone = await http.post("/ops/dashboard/disconnect", json={"client_id": "bob"})
        assert gone.json()["disconnected"] is False


async def test_disconnect_closes_a_local_client_too(nodes: Nodes) -> None:
    a = nodes("a")
    await a.start()
    ann = FakeSocket("ann")
    await a.connect("ann", ann)
    async with client_for(a) as http:
        done = await http.post("/ops/dashboard/disconnect", json={"client_id": "ann"})
    assert done.json()["disconnected"] is True
    assert (await ann.wait_closed())[0] == 1000


async def test_disconnect_takes_any_spelling_of_json_and_refuses_an_unusable_id(
        nodes: Nodes) -> None:
    """A lone surrogate in the id (valid JSON, text no frame can carry) was a 500 with a
    traceback, and so was JSON nested deeper than the parser recurses; `Application/JSON`
    (media types are case-insensitive) was a 415."""
    a = nodes("a")
    await a.start()
    ann = FakeSocket("ann")
    await a.connect("ann", ann)
    async with client_for(a) as http:
        for body in ('{"client_id": "\\ud800"}', '{"client_id": ""}', '{"client_id": 7}',
                     '{"client_id": "' + "x" * 322 + '"}',
                     "[" * 100_000 + "]" * 100_000):  # deeper than the parser recurses
            bad = await http.post("/ops/dashboard/disconnect", content=body,
                                  headers={"content-type": "application/json"})
            assert bad.status_code == 422, body
        done = await http.post("/ops/dashboard/disconnect", content='{"client_id": "ann"}',
                               headers={"content-type": "Application/JSON; charset=utf-8"})
        assert done.json() == {"client_id": "ann", "disconnected": True}
    assert (await ann.wait_closed())[0] == 1000
