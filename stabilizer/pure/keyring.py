"""The token keys of a node whose key the backend shares (no token_secret configured). Pure:
no I/O, the clock is an argument.

The store's key signs. Every key a token still alive may be signed with verifies, each until
a wall time: a node that adopts a new store key (the store restarted empty, and another node
created the key first) keeps verifying with the key it signed with before, for as long as a
token signed with it can live, and gives that key to the store, so the other nodes learn it.
Each sync offers the store what the node holds and adopts what the store holds:

    offer, held = keyring.offer(now)            # ours (or a fresh key), and what verifies
    keyring.adopt(await store.share_keys(offer, held), now)
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SharedKeys:
    """The token keys a store shares: the one every node signs with, and every key a token
    still alive may be signed with, mapped to the wall time (time.time()) it verifies until."""

    signing: bytes
    verifying: Mapping[bytes, float]


def new_shared_key() -> bytes:
    """A fresh random key in the stored form: 64 hex characters."""
    return secrets.token_hex(32).encode("ascii")


class SharedKeyring:
    """The keys one node signs and verifies with while the backend shares them.

    `keep` is how long a key verifies after it last signed: the token lifetime plus the
    clock skew the replicas are allowed (max_clock_skew).
    """

    def __init__(self, keep: float, signing: bytes | None = None) -> None:
        self._keep = keep
        self._signing = signing
        self._verifying: dict[bytes, float] = {}

    @property
    def signing(self) -> bytes | None:
        """The key this node signs with; None until a store's key was adopted."""
        return self._signing

    def keys(self) -> list[bytes]:
        """The signing key first, then every key that still verifies (empty without one)."""
        if self._signing is None:
            return []
        return [self._signing, *self._verifying]

    def offer(self, now: float) -> tuple[bytes, dict[bytes, float]]:
        """What to give the store: the key it should keep when it has none (ours, or a fresh
        one when we have none) and the keys we verify with, each with its end (ours ends
        `keep` after now: tokens we signed until now live that long)."""
        held = {key: until for key, until in self._verifying.items() if until > now}
        if self._signing is None:
            return new_shared_key(), held
        held[self._signing] = max(held.get(self._signing, 0.0), now + self._keep)
        return self._signing, held

    def adopt(self, shared: SharedKeys, now: float) -> bool:
        """Sign with the store's key from now on; verify with it, with what we held and with
        what the store lists, until each one's end. True when the signing key changed."""
        _, held = self.offer(now)
        for key, until in shared.verifying.items():
            if until > max(now, held.get(key, 0.0)):
                held[key] = until
        previous = self._signing
        self._signing = shared.signing
        self._verifying = held
        return previous is None or not hmac.compare_digest(previous, shared.signing)
