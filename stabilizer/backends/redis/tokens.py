"""Tokens and cluster events in Redis: single use with SET NX, the shared token keys, and
connect/disconnect events on the events channel.

The shared keys are two keys of the namespace's slot: ``{ns}:secret``, the key every node
signs with (a string, created with SET NX), and ``{ns}:keyring``, a hash of every
key a live token may be signed with -> the wall time (ms) it verifies until. Nodes write back
what they hold at each sync, so both survive a store that restarts empty.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.errors import BackendUnavailable
from stabilizer.pure.keyring import SharedKeys
from stabilizer.pure.wire import Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent


class RedisTokens:
    """Single-use nonces and the shared token keys, cluster-wide."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._spends = ScriptBatcher(core, core.scripts.spend_token, "consume_token")

    @property
    def known_secret(self) -> None:
        """None: the key lives in Redis (share_keys reads it)."""
        return None

    async def consume(self, nonce: str, until: float) -> bool:
        """SET NX until wall time `until` (a script, batched with concurrent ones): the
        first caller wins, cluster-wide."""
        ttl_ms = max(int((until - time.time()) * 1000), 1000)
        return bool(int(await self._spends.submit([self._core.keys.token(nonce)], [ttl_ms])))

    async def restore(self, nonce: str) -> None:
        """DEL the consumed-token marker."""
        await self._core.call(self._core.client.delete(self._core.keys.token(nonce)),
                              "restore_token")

    async def share_keys(self, offer: bytes, held: Mapping[bytes, float]) -> SharedKeys:
        """SHARE_KEYS: SET NX the signing key, merge `held` into the keyring, read both."""
        core = self._core
        args: list[bytes | int] = [int(time.time() * 1000), offer]
        for key, until in held.items():
            args += [key, int(until * 1000)]
        reply = await core.call(core.scripts.share_keys(
            keys=[core.keys.secret, core.keys.keyring], args=args), "share_keys")
        try:
            signing, ring = reply
            verifying = {_raw(ring[i]): int(ring[i + 1]) / 1000
                         for i in range(0, len(ring), 2)}
            if not signing:
                raise ValueError("no signing key after SET NX")
            return SharedKeys(_raw(signing), verifying)
        except (TypeError, ValueError, IndexError) as exc:
            raise BackendUnavailable("the shared token keys came back malformed") from exc


def _raw(value: object) -> bytes:
    """A key as Redis returned it: bytes, or text from a client that decodes replies."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if not isinstance(value, bytes):
        raise TypeError(f"a token key is bytes, got {type(value).__name__}")
    return value


class RedisEvents:
    """Connect and disconnect events on the events channel."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def publish(self, event: ClusterEvent) -> None:
        """PUBLISH an EVENT envelope to the events channel."""
        core = self._core
        envelope = encode(Envelope(Kind.EVENT, core.node_id, None, event_body(event)))
        await core.publish(core.keys.events_channel, envelope, "event")
