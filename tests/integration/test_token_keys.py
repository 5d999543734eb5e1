"""Reconnect tokens across replicas: single use under clock skew, and rotating a configured
key during a rolling deploy."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig
from stabilizer.errors import InvalidTokenError
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
OLD, NEW = "old-key-" + "o" * 24, "new-key-" + "n" * 24


# ---------------------------------------------------------- single use under clock skew


class SkewedClock:
    """The wall clock the token code reads, `ahead` seconds ahead of the real one: the node
    that acts next reads its own clock."""

    def __init__(self) -> None:
        self.ahead = 0.0
        self._real = time.time

    def time(self) -> float:
        return self._real() + self.ahead


async def test_a_spent_token_stays_spent_on_a_replica_whose_clock_is_behind(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B signs a token; A, whose clock is a minute ahead of B's, spends it just before it
    expires on A's clock. On B's clock the token lives another minute: B must still find
    it spent (the mark outlives the token by MAX_CLOCK_SKEW, not by a second)."""
    clock = SkewedClock()
    for module in ("stabilizer.services.tokens", "stabilizer.backends.redis.tokens"):
        monkeypatch.setattr(f"{module}.time", clock)

    def config(node_id: str) -> WebSocketConfig:
        return WebSocketConfig(redis_url=redis_url, namespace=namespace, node_id=node_id,
                               token_secret=OLD, reconnect_token_ttl=60, **QUIET)

    a, b = make_manager(config("a")), make_manager(config("b"))
    await a.start()
    await b.start()
    token = b.generate_reconnect_token("alice")  # B's clock: the real one
    clock.ahead = 59.5  # A's
    assert await a.validate_reconnect_token(token) == "alice"
    # a probe set now with the mark's old lifetime (what was left of the token on A's
    # clock, plus 1 s) and then some: once Redis expired it, the old mark was gone too
    store = Redis.from_url(redis_url)
    probe = f"{namespace}-probe"
    try:
        await store.set(probe, b"1", px=2000)
        await until(lambda: _gone(store, probe))
    finally:
        await store.aclose()
    clock.ahead = 0.0  # B's: the token expires in a minute
    with pytest.raises(InvalidTokenError, match="already used"):
        await b.validate_reconnect_token(token)


async def _gone(store: Redis, key: str) -> bool:
    return not await store.exists(key)


# ---------------------------------------------------------- rotating a configured key


@pytest.mark.parametrize(("running", "deployed"), [
    ((OLD,), (OLD, NEW)),       # first deploy: the new key verifies everywhere, old signs
    ((OLD, NEW), (NEW, OLD)),   # second deploy: the new key signs
    ((NEW, OLD), (NEW,)),       # a token lifetime later: the old key goes
])
async def test_a_key_rotated_in_two_deploys_refuses_no_token_during_either(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    running: tuple[str, ...], deployed: tuple[str, ...],
) -> None:
    """During each rolling deploy replicas on the old and the new keyring run side by
    side: a token either signs validates on the other."""
    def config(node_id: str, keys: tuple[str, ...]) -> WebSocketConfig:
        return WebSocketConfig(redis_url=redis_url, namespace=namespace, node_id=node_id,
                               token_secret=keys, **QUIET)

    old, new = make_manager(config("old", running)), make_manager(config("new", deployed))
    await old.start()
    await new.start()
    assert await new.validate_reconnect_token(old.generate_reconnect_token("alice")) == "alice"
    assert await old.validate_reconnect_token(new.generate_reconnect_token("bob")) == "bob"
