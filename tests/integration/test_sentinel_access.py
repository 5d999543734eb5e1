"""Reaching Redis through Sentinel: a sentinel that hangs, listed first, costs a fraction of
one call rather than every call."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

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

