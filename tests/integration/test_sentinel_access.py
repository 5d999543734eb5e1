"""Reaching Redis through Sentinel: a sentinel that hangs, listed first, costs a fraction of
one call rather than every call; the master's ACL user and a password that needs
percent-encoding in the URL arrive as they would from a redis:// URL; the sentinels' own
credentials come from the URL's query."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisSentinelSetup

pytestmark = pytest.mark.redis

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


@pytest.fixture
def hung_sentinel() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield int(listener.getsockname()[1])


async def works(manager: WebSocketConnectionManager, node_id: str) -> None:
    """The manager starts, registers a client and finds it again through Redis."""
    await manager.start()
    await manager.connect("alice", FakeSocket("alice"))
    assert await manager.locate_client("alice") == node_id
    assert await manager.get_nodes() == [node_id]


async def test_a_hung_sentinel_listed_first_does_not_cut_the_node_off(
    redis_sentinel: RedisSentinelSetup, hung_sentinel: int, namespace: str,
    make_manager: ManagerFactory,
) -> None:
    url = (f"redis+sentinel://127.0.0.1:{hung_sentinel},127.0.0.1:"
           f"{redis_sentinel.sentinel_port}/{redis_sentinel.service}")
    manager = make_manager(WebSocketConfig(redis_url=url, namespace=namespace, node_id="a",
                                           op_timeout=1.0, **QUIET))  # type: ignore[arg-type]
    await works(manager, "a")


@contextlib.asynccontextmanager
async def acl_user(ports: list[int], user: str, password: str) -> AsyncIterator[None]:
    """An ACL user on each server of `ports` (ACLs are not replicated), removed after."""
    clients = [Redis(host="127.0.0.1", port=port) for port in ports]
    try:
        for client in clients:
            await client.execute_command("ACL", "SETUSER", user, "on", f">{password}",
                                         "~*", "&*", "+@all")
        yield
    finally:
        for client in clients:
            await client.execute_command("ACL", "DELUSER", user)
            await client.aclose()


async def users_of(port: int) -> set[str]:
    """The users of the connections open on the server at `port`."""
    client = Redis(host="127.0.0.1", port=port)
    try:
        return {entry["user"] for entry in await client.client_list()}
    finally:
        await client.aclose()


async def test_the_masters_user_and_an_encoded_password_are_used_as_in_a_redis_url(
    redis_sentinel: RedisSentinelSetup, namespace: str, make_manager: ManagerFactory,
) -> None:
    user, password = f"app-{namespace}", "p@ss/w:x#1"
    servers = [redis_sentinel.master.port, redis_sentinel.replica.port]
    async with acl_user(servers, user, password):
        url = (f"redis+sentinel://{user}:{quote(password, safe='')}@127.0.0.1:"
               f"{redis_sentinel.sentinel_port}/{redis_sentinel.service}")
        manager = make_manager(WebSocketConfig(redis_url=url, namespace=namespace,
                                               node_id="a", **QUIET))  # type: ignore[arg-type]
        await works(manager, "a")
        master = redis_sentinel.current_master_port()
        assert user in await users_of(master)
        await manager.graceful_shutdown(timeout=2.0)


async def test_the_sentinels_own_credentials_come_from_the_query(
    redis_sentinel: RedisSentinelSetup, namespace: str, make_manager: ManagerFactory,
) -> None:
    user, password = f"watch-{namespace}", "w@tch&x"
    async with acl_user([redis_sentinel.sentinel_port], user, password):
        url = (f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel_port}/"
               f"{redis_sentinel.service}?sentinel_username={user}"
               f"&sentinel_password={quote(password, safe='')}")
        manager = make_manager(WebSocketConfig(redis_url=url, namespace=namespace,
                                               node_id="a", **QUIET))  # type: ignore[arg-type]
        await works(manager, "a")
        assert user in await users_of(redis_sentinel.sentinel_port)
        await manager.graceful_shutdown(timeout=2.0)
