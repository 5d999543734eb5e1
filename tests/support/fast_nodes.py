"""Managers on one private redis-server, with maintenance fast enough for a test to wait
for a sweep: a step every 0.5 s, the orphan grace 3 s (2 x node_ttl), a sweep's lease 2 s
(4 x op_timeout). Import `node` (the fixture) and re-export it in `__all__`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.support.redis_server import RedisServer

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
FAST: dict[str, Any] = {"node_ttl": 1.5, "op_timeout": 0.5}  # maintenance every 0.5 s
# a bound on a wait for a sweep: the orphan grace, the lease and a few maintenance steps
LIMIT = 12.0

Node = Callable[..., WebSocketConnectionManager]


@pytest.fixture
def node(namespace: str, make_manager: ManagerFactory, private_redis: RedisServer) -> Node:
    """Build a manager `node(node_id, **config)` on the private redis-server."""
    def build(node_id: str, **extra: Any) -> WebSocketConnectionManager:
        return make_manager(WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                                            node_id=node_id, **QUIET, **FAST, **extra))
    return build


async def started_pair(node: Node, **config: Any,
                       ) -> tuple[WebSocketConnectionManager, WebSocketConnectionManager]:
    """Nodes "a" and "b" with `config`, started."""
    a, b = node("a", **config), node("b", **config)
    await a.start()
    await b.start()
    return a, b


def dies_after_removal(manager: WebSocketConnectionManager,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on `manager`'s closes stop after the presence removal, as a node that dies
    there: its settle (the end of the client's groups) never runs."""

    async def dead(*args: Any, **kwargs: Any) -> None:
        """Nothing after the presence removal runs."""

    monkeypatch.setattr(manager._node.closing, "settle", dead)


def sweep_ends(managers: Iterable[WebSocketConnectionManager], client_id: str,
               monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a sweep of any of `managers` ends `client_id`'s session."""
    ended = asyncio.Event()
    for manager in managers:
        sessions: Any = manager.backend.sessions

        async def watched(limit: int = 100, *, sweep: Any = sessions.sweep) -> list[str]:
            swept: list[str] = await sweep(limit)
            if client_id in swept:
                ended.set()
            return swept

        monkeypatch.setattr(sessions, "sweep", watched)
    return ended
