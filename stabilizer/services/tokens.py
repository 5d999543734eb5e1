"""Reconnect tokens: issue, verify, spend once cluster-wide, and give back when the connection
they were spent on is refused.

Without token_secret the backend shares the keys (pure/keyring.py). A node syncs them at
start, at the maintenance step after the store restarted or failed over (giving the store
back what it holds, so the keys survive a store that restarted empty), and when a token
names a key it does not know (at most once per REREAD_INTERVAL, so forged key ids cannot
flood the store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from stabilizer.errors import BackendUnavailable, InvalidTokenError, WebSocketStabilizerError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.keyring import SharedKeyring
from stabilizer.pure.text import check_client_id
from stabilizer.pure.tokens import TokenClaims, TokenCodec, key_id_of

logger = logging.getLogger(__name__)

#: Seconds between two reads of the shared keys for tokens that name an unknown key.
REREAD_INTERVAL: Final = 1.0


class TokenService:
    """Signs with the configured keyring, or with the keys the backend shares."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        config = ctx.config
        keys = [key.encode("utf-8") for key in config.token_keys]
        # None: the configured keys sign, and the store never sees them
        self._shared: SharedKeyring | None = None
        if not keys:
            self._shared = SharedKeyring(config.token_ttl_seconds + config.max_clock_skew,
                                         ctx.backend.tokens.known_secret)
            keys = self._shared.keys()
        self._codec = TokenCodec(keys, config.namespace) if keys else None
        self._reread = asyncio.Lock()
        self._reread_at = float("-inf")  # loop time of the last read for an unknown key
        self._reread_failed = False
        self._backend_log = RateLimitedLog(logger)

    @property
    def has_key(self) -> bool:
        """True once a signing key is known (configured, or synced with the backend)."""
        return self._codec is not None

    async def sync_shared_keys(self) -> bool:
        """Give the backend the keys this node holds and adopt the ones it shares (nothing
        to do with configured keys); False while it cannot be reached."""
        ctx = self._ctx
        shared = self._shared
        if shared is None or not ctx.config.enable_reconnect:
            return True
        offer, held = shared.offer(time.time())
        try:
            keys = await ctx.ask(ctx.backend.tokens.share_keys(offer, held))
        except BackendUnavailable as exc:
            self._backend_log.warning("shared token keys not available", exc=exc)
            return False
        had_key = shared.signing is not None
        if shared.adopt(keys, time.time()) and had_key:
            logger.warning("the shared token key changed (the backend lost it); signing with "
                           "the new one, still verifying with the old one")
        self._codec = TokenCodec(shared.keys(), ctx.config.namespace)
        return True

    async def _learn_key(self, kid: str) -> None:
        """Read the shared keys again for a token signed by key `kid`, unknown here (another
        node may have written it back since), unless they were read less than REREAD_INTERVAL
        ago.

        Raises:
            BackendUnavailable: the last read failed (the token may be good: retry later).
        """
        async with self._reread:
            if self._codec is not None and self._codec.knows(kid):
                return  # the read another token waited for learned it
            now = asyncio.get_running_loop().time()
            if now - self._reread_at >= REREAD_INTERVAL:
                self._reread_at = now
                self._reread_failed = not await self.sync_shared_keys()
            if self._reread_failed:
                raise BackendUnavailable("the token names a key this node does not know, and "
                                         "the shared keys cannot be read: retry")

    def issue(self, client_id: str) -> str:
        """A signed single-use token for `client_id`, valid token_ttl_seconds on any node.

        Raises:
            InvalidClientIdError: the id is not usable.
            WebSocketStabilizerError: tokens are disabled, or no key is known yet.
        """
        config = self._ctx.config
        if not config.enable_reconnect:
            raise WebSocketStabilizerError("reconnect tokens are disabled (enable_reconnect)")
        check_client_id(client_id, config.max_client_id_length)
        if self._codec is None:
            raise WebSocketStabilizerError(
                "no token key yet: await manager.start() first, or set token_secret")
        self._ctx.stats.tokens_issued += 1
        return self._codec.sign(client_id, now=time.time(), ttl=config.token_ttl_seconds)

    async def verify(self, token: str) -> TokenClaims:
        """Check a token's signature, namespace and expiry without spending it.

        Raises:
            InvalidTokenError: malformed, forged, foreign, or tokens disabled.
            TokenExpiredError: authentic but expired.
            BackendUnavailable: the shared keys cannot be read.
        """
        if not self._ctx.config.enable_reconnect:
            raise InvalidTokenError("reconnect tokens are disabled (enable_reconnect)")
        if self._codec is None and not await self.sync_shared_keys():
            raise BackendUnavailable("token key unavailable: the backend cannot be reached")
        assert self._codec is not None
        kid = key_id_of(token)
        if self._shared is not None and kid is not None and not self._codec.knows(kid):
            await self._learn_key(kid)  # another node may have given the store its key
        return self._codec.verify(token, now=time.time())

    async def spend(self, claims: TokenClaims) -> None:
        """Use a verified token up, cluster-wide, until max_clock_skew after it expires (a
        replica whose clock is behind still finds it used while it looks alive there).

        Raises:
            InvalidTokenError: it was already used.
            BackendUnavailable: single use cannot be checked.
        """
        ctx = self._ctx
        until = claims.expires_at + ctx.config.max_clock_skew
        if not await ctx.ask(ctx.backend.tokens.consume(claims.nonce, until)):
            raise InvalidTokenError("token was already used; request a new one")

    async def consume(self, token: str) -> TokenClaims:
        """Verify and spend a token; return its claims."""
        claims = await self.verify(token)
        await self.spend(claims)
        return claims

    async def restore(self, claims: TokenClaims) -> None:
        """Make a spent token usable again (its connection was refused); best effort."""
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.tokens.restore(claims.nonce))
        except BackendUnavailable:
            logger.warning("token of %r could not be restored", claims.client_id)
