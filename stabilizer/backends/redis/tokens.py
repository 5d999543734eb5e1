"""Tokens and cluster events in Redis: single use with SET NX, the shared signing key, and
connect/disconnect events on the events channel."""

from __future__ import annotations

import secrets
import time
from typing import cast

from stabilizer.backends.redis.core import RedisCore, ScriptBatcher
from stabilizer.errors import BackendUnavailable
from stabilizer.pure.tokens import MAX_CLOCK_SKEW
from stabilizer.pure.wire import Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent


class RedisTokens:
    """Single-use nonces and the shared key, cluster-wide."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._spends = ScriptBatcher(core, core.scripts.spend_token, "consume_token")

    @property
    def known_secret(self) -> None:
        """None: the key lives in Redis (shared_secret fetches it)."""
        return None

    async def consume(self, nonce: str, expires_at: float) -> bool:
        """SET NX until the token's expiry plus MAX_CLOCK_SKEW (a script, batched with
        concurrent ones): the first caller wins, cluster-wide."""
        ttl_ms = max(int((expires_at + MAX_CLOCK_SKEW - time.time()) * 1000), 1000)
        return bool(int(await self._spends.submit([self._core.keys.token(nonce)], [ttl_ms])))

    async def restore(self, nonce: str) -> None:
        """DEL the consumed-token marker."""
        await self._core.call(self._core.client.delete(self._core.keys.token(nonce)),
                              "restore_token")

    async def shared_secret(self) -> bytes:
        """The key every node signs with: created once with SET NX, then read."""
        core = self._core
        key = core.keys.secret
        await core.call(core.client.set(key, secrets.token_hex(32).encode(), nx=True), "secret")
        value = await core.call(core.client.get(key), "secret")
        if not value:
            raise BackendUnavailable("shared token key vanished between SET NX and GET")
        return cast(bytes, value)


class RedisEvents:
    """Connect and disconnect events on the events channel."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def publish(self, event: ClusterEvent) -> None:
        """PUBLISH an EVENT envelope to the events channel."""
        core = self._core
        envelope = encode(Envelope(Kind.EVENT, core.node_id, None, event_body(event)))
        await core.publish(core.keys.events_channel, envelope, "event")
