"""Reconnect tokens across replicas: the shared key after the store restarted empty, single
use under clock skew, and rotating a configured key during a rolling deploy.

A token from replica A validates on B. Without token_secret the key lives in Redis
(``{ns}:secret``); a store that restarted empty lost it, and the next node to start created
another one while the running nodes kept signing with the old. Nodes now give the store back
what they hold and adopt what it holds, verifying with the key they signed with before for as
long as its tokens live.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.base import Liveness
from stabilizer.errors import BackendUnavailable, InvalidTokenError
from stabilizer.pure.tokens import TokenCodec
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import until
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:
    from stabilizer.pure.keyring import SharedKeys

pytestmark = pytest.mark.redis

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
OLD, NEW = "old-key-" + "o" * 24, "new-key-" + "n" * 24


async def validates(manager: WebSocketConnectionManager, token: str, client_id: str) -> bool:
    """True when `manager` accepts `token` (spending it) for `client_id`."""
    try:
        return await manager.validate_reconnect_token(token) == client_id
    except (InvalidTokenError, BackendUnavailable):
        return False


def hold_steps(manager: WebSocketConnectionManager,
               monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold the manager's maintenance steps at their keepalive (as a busy node's run late)
    until the returned event is set."""
    go = asyncio.Event()
    liveness = manager.backend.liveness
    keepalive = liveness.keepalive

    async def held(*args: Any, **kwargs: Any) -> Liveness:
        await go.wait()
        return await keepalive(*args, **kwargs)

    monkeypatch.setattr(liveness, "keepalive", held)
    return go


# ---------------------------------------------------------- the store restarts empty


async def test_tokens_validate_across_replicas_after_the_store_restarts_empty(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis restarts without persistence; node B starts before node A's next maintenance
    step and creates a new key. Tokens A signed with its key (before and after the restart)
    validate on B, B's on A, and both end up signing with one key."""
    def config(node_id: str) -> WebSocketConfig:
        return WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                               node_id=node_id, node_ttl=3.0, **QUIET)

    a = make_manager(config("a"))
    await a.start()
    before = [a.generate_reconnect_token(f"early-{n}") for n in range(2)]
    go = hold_steps(a, monkeypatch)
    await asyncio.to_thread(private_redis.restart)
    b = make_manager(config("b"))
    await b.start()  # the store has no key: B's becomes the store's
    from_a, from_b = a.generate_reconnect_token("bob"), b.generate_reconnect_token("carol")
    go.set()

    await until(lambda: validates(b, before[0], "early-0"), timeout=15.0)
    await until(lambda: validates(b, from_a, "bob"), timeout=15.0)
    await until(lambda: validates(a, from_b, "carol"), timeout=15.0)
    # one key signs on both now: a fresh token validates on the other node at once
    assert await b.validate_reconnect_token(a.generate_reconnect_token("dave")) == "dave"
    assert await a.validate_reconnect_token(b.generate_reconnect_token("erin")) == "erin"
    # a node started afterwards knows A's old key from the store
    c = make_manager(config("c"))
    await c.start()
    assert await c.validate_reconnect_token(before[1]) == "early-1"


async def test_the_node_that_finds_the_store_empty_gives_it_its_key(
    private_redis: RedisServer, namespace: str, make_manager: ManagerFactory,
) -> None:
    """No node starts in between: A's next step writes its key back, so a node started
    afterwards signs with it and A's tokens need no new key anywhere."""
    def config(node_id: str) -> WebSocketConfig:
        return WebSocketConfig(redis_url=private_redis.url, namespace=namespace,
                               node_id=node_id, node_ttl=3.0, **QUIET)

    a = make_manager(config("a"))
    await a.start()
    token = a.generate_reconnect_token("alice")
    await asyncio.to_thread(private_redis.restart)
    store = Redis.from_url(private_redis.url)
    try:
        await until(lambda: store.exists(f"{{{namespace}}}:secret"), timeout=15.0)
    finally:
        await store.aclose()
    b = make_manager(config("b"))
    await b.start()
    assert await b.validate_reconnect_token(token) == "alice"
    assert await a.validate_reconnect_token(b.generate_reconnect_token("bob")) == "bob"


async def test_tokens_naming_unknown_keys_read_the_store_once_per_interval(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token that names a key the node does not know makes it read the shared keys again
    (another node may have written that key back), but forged key ids cannot flood Redis."""
    monkeypatch.setattr("stabilizer.services.tokens.REREAD_INTERVAL", 3600.0)
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET))
    hold_steps(manager, monkeypatch)  # only the reads the tokens make are counted
    await manager.start()
    tokens = manager.backend.tokens
    share_keys = tokens.share_keys
    reads = 0

    async def counted(*args: Any, **kwargs: Any) -> SharedKeys:
        nonlocal reads
        reads += 1
        return await share_keys(*args, **kwargs)

    monkeypatch.setattr(tokens, "share_keys", counted)
    genuine = manager.generate_reconnect_token("alice")
    _, _, payload, signature = genuine.split(".")
    forged = [f"s1.{secrets.token_urlsafe(6)}.{payload}.{signature}" for _ in range(50)]
    outcomes = await asyncio.gather(*(manager.validate_reconnect_token(token)
                                      for token in forged), return_exceptions=True)
    assert all(isinstance(outcome, InvalidTokenError) for outcome in outcomes), outcomes
    assert reads == 1
    assert await manager.validate_reconnect_token(genuine) == "alice"


async def test_a_configured_key_never_reaches_the_store(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace,
                                           token_secret=OLD, **QUIET))
    await manager.start()
    token = manager.generate_reconnect_token("alice")
    assert await manager.validate_reconnect_token(token) == "alice"
    other = make_manager(WebSocketConfig(token_secret=NEW, namespace=namespace))
    with pytest.raises(InvalidTokenError, match="does not know"):
        await manager.validate_reconnect_token(other.generate_reconnect_token("bob"))
    store = Redis.from_url(redis_url)
    try:
        assert not await store.exists(f"{{{namespace}}}:secret", f"{{{namespace}}}:keyring")
    finally:
        await store.aclose()


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
    it spent (the mark outlives the token by max_clock_skew, not by a second)."""
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


async def test_a_replica_behind_by_less_than_max_clock_skew_still_refuses_a_spent_token(
    redis_url: str, namespace: str, make_manager: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spends its own token; B's clock is 400 s behind A's, within the configured
    max_clock_skew (600 s, more than the 300 s default): B refuses the token now and for as
    long as it looks alive on B's clock. Redis's clock (A's) cannot be wound forward, so
    the test reads when the store drops the mark (PEXPIRETIME) instead of waiting for it."""
    clock = SkewedClock()
    for module in ("stabilizer.services.tokens", "stabilizer.backends.redis.tokens"):
        monkeypatch.setattr(f"{module}.time", clock)

    def config(node_id: str) -> WebSocketConfig:
        return WebSocketConfig(redis_url=redis_url, namespace=namespace, node_id=node_id,
                               token_secret=OLD, reconnect_token_ttl=60, max_clock_skew=600,
                               **QUIET)

    a, b = make_manager(config("a")), make_manager(config("b"))
    await a.start()
    await b.start()
    token = a.generate_reconnect_token("alice")  # A's clock: the real one, as Redis's
    assert await a.validate_reconnect_token(token) == "alice"
    clock.ahead = -400.0  # B's
    with pytest.raises(InvalidTokenError, match="already used"):
        await b.validate_reconnect_token(token)
    claims = TokenCodec([OLD.encode()], namespace).verify(token, now=time.time())
    store = Redis.from_url(redis_url)
    try:
        dropped_ms = await store.pexpiretime(f"{{{namespace}}}:tok:{claims.nonce}")
    finally:
        await store.aclose()
    assert dropped_ms >= (claims.expires_at + 400.0) * 1000  # B's view of the expiry


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
