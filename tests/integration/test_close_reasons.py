"""A close reason that no close frame could carry as it is (a lone surrogate, as a CLI
argument under a UTF-8 locale holds for a byte that is not UTF-8): every path that asks
another node to close a connection carries it the way a local close sends it (cut to 123
UTF-8 bytes, lone surrogates as "?"), so the close happens instead of being dropped by the
node that holds the connection."""

from __future__ import annotations

import os
from typing import Any

import pytest

from stabilizer import Emitter, Identity, WebSocketConfig, WebSocketConnectionManager
from tests.conftest import ManagerFactory
from tests.integration.test_users import Tab, tabs_of
from tests.support.cli import cli
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
#: What a locale decoding UTF-8 makes of the bytes b"caf\xe9" (surrogateescape).
REASON = os.fsdecode(b"caf\xe9")
#: What a close frame carries for it.
SENT = "caf?"


async def bob_on_b(make_manager: ManagerFactory, redis_url: str, namespace: str) -> tuple[
        WebSocketConnectionManager, WebSocketConnectionManager, FakeSocket]:
    """Two started nodes on one Redis, and bob connected to the second."""
    a, b = (make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                         node_id=f"node-{name}", **QUIET))
            for name in "ab")
    await a.start()
    await b.start()
    bob = FakeSocket("bob")
    await b.connect("bob", bob)
    return a, b, bob


async def test_an_emitters_kicks_with_a_lone_surrogate_in_the_reason_happen(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    assert REASON == "caf\udce9"
    _a, b, bob = await bob_on_b(make_manager, redis_url, namespace)
    async with Emitter(redis_url, namespace=namespace) as emitter:
        assert await emitter.disconnect_client("bob", code=4400, reason=REASON) is True
        assert await bob.wait_closed() == (4400, SENT)
        async with tabs_of((b, "ann/1")) as tabs:
            assert await emitter.disconnect_user("ann", code=4403, reason=REASON) == 1
            assert await tabs[0].ws.wait_closed() == (4403, SENT)
    assert b.stats.wire_errors == 0


async def test_a_nodes_remote_disconnects_with_a_lone_surrogate_in_the_reason_happen(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    a, b, bob = await bob_on_b(make_manager, redis_url, namespace)
    assert await a.disconnect_client("bob", code=4400, reason=REASON) is True
    assert await bob.wait_closed() == (4400, SENT)
    tab = Tab(b, "ann/1", Identity("ann"))
    await tab.ready()
    assert await a.disconnect_user("ann", code=4403, reason=REASON) == 1
    assert await tab.ws.wait_closed() == (4403, SENT)
    tab.task.cancel()
    assert b.stats.wire_errors == 0


async def test_the_cli_kicks_with_a_reason_the_locale_cannot_decode(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    _a, b, bob = await bob_on_b(make_manager, redis_url, namespace)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("STABILIZER_")} | {"LC_ALL": "C.UTF-8"}

    run = await cli("--redis-url", redis_url, "--namespace", namespace, "kick", "bob",
                    "--code", "4400", "--reason", REASON, env=env)

    assert (run.code, run.out) == (0, "closing bob with 4400\n")
    assert await bob.wait_closed() == (4400, SENT)
    assert b.stats.wire_errors == 0
