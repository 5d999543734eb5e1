"""Users across nodes: several managers on one real Redis (or one embedded node), each
serving sessions of one user on fake sockets; authentication at connect and expiry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stabilizer import (
    AuthenticationError,
    AuthUnavailable,
    BackendUnavailable,
    CloseCode,
    Credentials,
    CredentialsExpiredError,
    Identity,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.session import Session
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
Nodes = Callable[..., list[WebSocketConnectionManager]]


@pytest.fixture
def nodes(make_manager: ManagerFactory, redis_url: str, namespace: str) -> Nodes:
    def build(count: int, **settings: Any) -> list[WebSocketConnectionManager]:
        authenticator = settings.pop("authenticator", None)
        return [make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                             node_id=f"node-{i}", **QUIET, **settings),
                             authenticator=authenticator) for i in range(count)]
    return build


class Tab:
    """One served session on a fake socket, its handler running in a task."""

    def __init__(self, manager: WebSocketConnectionManager, client_id: str | None,
                 identity: Identity | None = None, token: str | None = None,
                 positions: str | None = None) -> None:
        self.ws = FakeWebSocket(client_id or "tab")
        self.session: Session = manager.open_session(
            self.ws, client_id, identity=identity, token=token, positions=positions)
        self.admitted = asyncio.Event()
        self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        async with self.session as session:
            self.admitted.set()
            async for _ in session:
                pass

    async def ready(self) -> dict[str, Any]:
        """Wait for admission; return the session frame (raise if refused)."""
        await asyncio.wait([self.task, asyncio.ensure_future(self.admitted.wait())],
                           timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert self.session.refused is None, f"refused with {self.session.refused}"
        return dict(await self.ws.next_json())

    async def leave(self) -> None:
        self.ws.client_leaves()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def tabs_of(*pairs: tuple[WebSocketConnectionManager, str]) -> AsyncIterator[list[Tab]]:
    opened = [Tab(manager, client_id, Identity("ann", {"name": "Ann"}))
              for manager, client_id in pairs]
    try:
        for tab in opened:
            await tab.ready()
        yield opened
    finally:
        for tab in opened:
            tab.task.cancel()
        await asyncio.gather(*(tab.task for tab in opened), return_exceptions=True)


@pytest.mark.redis
async def test_send_to_user_reaches_every_tab_on_every_node(nodes: Nodes) -> None:
    a, b, c = nodes(3)
    async with tabs_of((a, "ann/1"), (b, "ann/2"), (c, "ann/3"), (c, "ann/4")) as tabs:
        assert await a.send_to_user("ann", {"text": "hi"}) == 4
        for tab in tabs:
            assert await tab.ws.next_json() == {"text": "hi"}
        assert await b.send_to_user("nobody", "x") == 0
        assert await b.send_to_user("", "x") == 0


@pytest.mark.redis
async def test_user_connections_and_count_are_cluster_wide(nodes: Nodes) -> None:
    a, b = nodes(2)
    async with tabs_of((a, "ann/1"), (b, "ann/2")):
        found = await b.get_user_connections("ann")  # (the two tabs connect concurrently)
        assert sorted((p.client_id, p.node_id, p.info) for p in found) == [
            ("ann/1", "node-0", {"name": "Ann"}), ("ann/2", "node-1", {"name": "Ann"})]
        assert await a.get_cluster_user_count() == 1
    async with asyncio.timeout(5):
        while await a.get_user_connections("ann"):  # released in the background
            await asyncio.sleep(0.02)
    assert await a.get_cluster_user_count() == 0


@pytest.mark.redis
async def test_disconnect_user_on_one_node_closes_its_tabs_everywhere(nodes: Nodes) -> None:
    a, b, c = nodes(3)
    async with tabs_of((a, "ann/1"), (b, "ann/2"), (c, "ann/3")) as tabs:
        other = Tab(b, "bob/1", Identity("bob"))
        await other.ready()
        assert await a.disconnect_user("ann", code=4321, reason="banned") == 3
        for tab in tabs:
            assert await tab.ws.wait_closed() == (4321, "banned")
        assert other.ws.closed is None
        other.task.cancel()
    with pytest.raises(ValueError, match="close code"):
        await a.disconnect_user("ann", code=1005)


@pytest.mark.redis
async def test_the_user_limit_holds_when_tabs_race_on_three_nodes(nodes: Nodes) -> None:
    managers = nodes(3, max_connections_per_user=2)
    tabs = [Tab(managers[i % 3], f"ann/{i}", Identity("ann")) for i in range(9)]
    async with asyncio.timeout(10):  # every session opened, admitted or refused
        await asyncio.gather(*(tab.admitted.wait() for tab in tabs))
    refused = [tab.session.refused for tab in tabs if tab.session.refused is not None]
    assert len(refused) == 7
    assert set(refused) == {CloseCode.USER_LIMIT}
    for tab in tabs:
        if tab.session.refused is not None:
            code, reason = await tab.ws.wait_closed()
            assert code == CloseCode.USER_LIMIT
            assert "retry_ms" in json.loads(reason or "{}")
        tab.task.cancel()
    await asyncio.gather(*(tab.task for tab in tabs), return_exceptions=True)


@pytest.mark.redis
async def test_with_history_a_tab_that_was_away_gets_the_users_messages_on_resume(
    nodes: Nodes,
) -> None:
    a, b = nodes(2, history_size=50)
    async with tabs_of((a, "ann/1")) as (first,):
        away = Tab(b, "ann/2", Identity("ann"))
        welcome = await away.ready()
        assert await a.send_to_user("ann", "one") == 2
        for tab in (first, away):
            frame = await tab.ws.next_json()
            assert (frame["stream"], frame["data"]) == ("u:ann", "one")
        position = [frame["offset"], frame["epoch"]]
        await away.leave()
        assert await a.send_to_user("ann", "two") >= 1
        assert (await first.ws.next_json())["data"] == "two"
        back = Tab(b, "ann/2", Identity("ann"), token=welcome["token"],
                   positions=json.dumps({"u:ann": position}))
        again = await back.ready()
        assert again["resumed"] is True
        replayed = await back.ws.next_json()
        assert (replayed["stream"], replayed["data"]) == ("u:ann", "two")
        assert (await back.ws.next_json())["type"] == "resume"
        back.task.cancel()


async def test_the_embedded_node_serves_users_too(make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    async with tabs_of((manager, "ann/1"), (manager, "ann/2")) as tabs:
        assert await manager.send_to_user("ann", "hello") == 2
        for tab in tabs:
            assert await tab.ws.next() == "hello"
        assert [p.client_id for p in await manager.get_user_connections("ann")] == [
            "ann/1", "ann/2"]
        assert await manager.disconnect_user("ann") == 2
        for tab in tabs:
            assert (await tab.ws.wait_closed())[0] == CloseCode.NORMAL


def authenticating(verdict: Any) -> Callable[[Credentials], Any]:
    async def authenticate(credentials: Credentials) -> Identity | None:
        if isinstance(verdict, BaseException):
            raise verdict
        if verdict == "slow":
            await asyncio.sleep(30)
        return verdict  # type: ignore[no-any-return]  # the test's chosen outcome
    return authenticate


@pytest.mark.parametrize(("verdict", "code"), [
    (None, CloseCode.AUTH_FAILED),
    (AuthenticationError("no such session"), CloseCode.AUTH_FAILED),
    (CredentialsExpiredError("expired"), CloseCode.AUTH_EXPIRED),
    (RuntimeError("the app's bug"), CloseCode.AUTH_FAILED),
    ("slow", CloseCode.TRY_AGAIN_LATER),
    ("not an identity", CloseCode.AUTH_FAILED),
    (Identity("ann", expires_at=time.time() - 5), CloseCode.AUTH_EXPIRED),
    (AuthUnavailable("the identity provider is down"), CloseCode.TRY_AGAIN_LATER),
    (BackendUnavailable("its session store is down"), CloseCode.TRY_AGAIN_LATER),
], ids=["none", "refused", "expired", "raised", "slow", "wrong-type", "already-expired",
        "cannot-check", "store-down"])
async def test_an_authenticator_refusal_closes_with_its_code(
    make_manager: ManagerFactory, verdict: Any, code: CloseCode,
) -> None:
    manager = make_manager(WebSocketConfig(connect_timeout=0.2, **QUIET),
                           authenticator=authenticating(verdict))
    ws = FakeWebSocket()
    async with manager.open_session(ws, "ann/1") as session:
        assert [m async for m in session] == []
    assert session.refused == code
    closed_with, reason = await ws.wait_closed()
    assert closed_with == code
    assert "Traceback" not in (reason or "")
    assert manager.get_connection_count() == 0


async def test_an_authenticated_plain_client_is_its_user_and_expires(
    make_manager: ManagerFactory,
) -> None:
    """A plain connection cannot refresh: it is closed with 4003 once its credentials
    expired and the grace passed."""
    manager = make_manager(WebSocketConfig(auth_refresh_grace=0.05, **QUIET),
                           authenticator=authenticating(Identity("ann",
                                                                 expires_at=time.time() + 0.3)))
    tab = Tab(manager, None, None)
    welcome = await tab.ready()
    assert tab.session.user_id == "ann"
    assert welcome["client_id"].startswith("ann/")
    assert await tab.ws.wait_closed(timeout=5) == (CloseCode.AUTH_EXPIRED,
                                                   "credentials expired")
    await asyncio.wait_for(tab.task, 5)
