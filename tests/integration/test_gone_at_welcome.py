"""A client that closes right after its handshake, before its node sent it anything.

The node's first send to it, the `session` frame, finds the client gone: the server's
prepared write sees the transport closed, or the ASGI send raises. That send closes the
connection; it went out just before the connection joined the pool, so the close found
nothing to take out of the pool, and the admission then put the closed connection in it.
No close could take it out again: it counted against max_connections for good (one such
client per slot, and the node refused everyone with 1013), routed the client's messages to
its dead socket, and a resync wrote its presence back. A connection closed while it enters
now stays out of the pool, closed and settled once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from stabilizer import CloseCode, Identity, WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_emitter import until
from tests.integration.test_store_incarnation import resyncs
from tests.integration.test_users import Tab
from tests.support.fakes import ClosedByClient, FakeSocket, FakeWebSocket, prepared_by_socket

__all__ = ["cluster"]  # the fixture, re-exported for pytest

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


def send_raises(name: str) -> FakeWebSocket:
    """A socket whose ASGI send raises (the client reset the connection)."""
    ws = FakeWebSocket(name)
    ws.fail_sends = True
    ws.client_leaves(1006)
    return ws


#: the two ways a node learns, at its first send, that the client left
GONE: dict[str, Callable[[str], FakeWebSocket]] = {
    "prepared": ClosedByClient, "asgi-send": send_raises}


async def served_gone(manager: WebSocketConnectionManager, ws: FakeWebSocket,
                      client_id: str) -> None:
    """Serve `ws` as an application does: read until the client is gone."""
    async with manager.open_session(ws, client_id) as session:
        assert session.refused is None
        while await session.receive() is not None:
            pass


@pytest.mark.parametrize("gone", sorted(GONE))
async def test_clients_gone_at_their_welcome_leave_no_connection_behind(
        make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch, gone: str) -> None:
    prepared_by_socket(monkeypatch)
    manager = make_manager(WebSocketConfig(max_connections=2, **QUIET))
    ended: list[str] = []
    manager.on_disconnect(lambda event: ended.append(event.conn_id))
    conn_ids: list[str] = []
    manager.on_connect(lambda event: conn_ids.append(event.conn_id))
    for i in range(3):  # more than max_connections
        await served_gone(manager, GONE[gone](f"quick{i}"), f"quick{i}")
    assert manager.get_connection_count() == 0
    assert manager.get_active_connections() == []
    assert conn_ids == []  # never announced connected
    await until(lambda: _at_least(ended, 3))
    assert len(set(ended)) == len(ended) == 3  # each settled once
    honest = FakeWebSocket("honest")
    async with manager.open_session(honest, "honest") as session:
        assert session.refused is None
        assert json.loads(await honest.next())["type"] == "session"
        assert manager.get_connection_count() == 1
        honest.client_leaves()
        assert await session.receive() is None


async def _at_least(seen: list[str], count: int) -> bool:
    return len(seen) >= count


async def test_a_client_gone_at_its_welcome_does_not_replace_its_live_socket_elsewhere(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its node neither keeps it nor takes the client's messages and closes for it: they
    reach the client's live socket on the other node."""
    prepared_by_socket(monkeypatch)
    a, b = cluster("a"), cluster("b")
    await started(a, b)
    await served_gone(b, ClosedByClient("c1-quick"), "c1")
    live = FakeSocket("c1")
    await a.connect("c1", live)
    assert not b.is_connected("c1")
    assert await b.send_to_client("c1", {"hi": "c1"}) is True
    assert await live.next_json() == {"hi": "c1"}
    assert await b.disconnect_client("c1", code=4600, reason="bye") is True
    assert await live.wait_closed() == (4600, "bye")


async def test_an_older_connection_is_replaced_even_by_one_gone_at_its_welcome(
        make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client opened a newer socket, if only to close it: the older one is closed as
    replaced, and the node holds neither."""
    prepared_by_socket(monkeypatch)
    manager = make_manager(WebSocketConfig(**QUIET))
    old = Tab(manager, "c1")
    await old.ready()
    await served_gone(manager, ClosedByClient("c1-quick"), "c1")
    assert (await old.ws.wait_closed())[0] == CloseCode.REPLACED
    async with asyncio.timeout(5.0):  # a bound: its handler ends with the close
        await old.task
    assert manager.get_connection_count() == 0


@pytest.mark.redis
async def test_a_resync_writes_back_no_seat_of_a_client_gone_at_its_welcome(
        make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch, redis_url: str,
        namespace: str) -> None:
    """Its user, at max_connections_per_user, connects again after the node re-registered
    its connections' presence (as after a store restart)."""
    prepared_by_socket(monkeypatch)
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                           max_connections_per_user=1, node_ttl=1.5,
                                           **QUIET))
    resynced = resyncs(manager, monkeypatch)
    ended: list[str] = []
    manager.on_disconnect(lambda event: ended.append(event.conn_id))
    async with manager.open_session(ClosedByClient("ann-quick"), "ann-quick",
                                    identity=Identity("ann")) as session:
        assert session.refused is None
    await until(lambda: _at_least(ended, 1))
    manager._node.ctx.want_resync()
    async with asyncio.timeout(20.0):  # a bound: the maintenance loop runs within node_ttl
        await resynced.get()
    assert await manager.get_user_connections("ann") == []
    tab = Tab(manager, "ann-tab", Identity("ann"))
    assert (await tab.ready())["type"] == "session"
    await tab.leave()
