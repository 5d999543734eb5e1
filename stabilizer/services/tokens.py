"""Reconnect tokens: issue, verify, spend once cluster-wide, and give back when the connection
they were spent on is refused."""

from __future__ import annotations

import logging
import time

from stabilizer.errors import BackendUnavailable, InvalidTokenError, WebSocketStabilizerError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.text import check_client_id
from stabilizer.pure.tokens import TokenClaims, TokenCodec

logger = logging.getLogger(__name__)


class TokenService:
    """Signs with the configured keyring, or with the key the backend shares."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        keys = [key.encode("utf-8") for key in ctx.config.token_keys]
        if not keys and (known := ctx.backend.tokens.known_secret) is not None:
            keys = [known]
        self._codec = TokenCodec(keys, ctx.config.namespace) if keys else None
        self._backend_log = RateLimitedLog(logger)

    @property
    def has_key(self) -> bool:
        """True once a signing key is known."""
        return self._codec is not None

    async def fetch_shared_key(self) -> bool:
        """Fetch (or create) the key the backend shares; False while it cannot be reached."""
        ctx = self._ctx
        try:
            key = await ctx.ask(ctx.backend.tokens.shared_secret())
        except BackendUnavailable as exc:
            self._backend_log.warning("shared token key not available yet", exc=exc)
            return False
        self._codec = TokenCodec([key], ctx.config.namespace)
        return True

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
            BackendUnavailable: the shared key cannot be fetched.
        """
        if not self._ctx.config.enable_reconnect:
            raise InvalidTokenError("reconnect tokens are disabled (enable_reconnect)")
        if self._codec is None and not await self.fetch_shared_key():
            raise BackendUnavailable("token key unavailable: the backend cannot be reached")
        assert self._codec is not None
        return self._codec.verify(token, now=time.time())

    async def spend(self, claims: TokenClaims) -> None:
        """Use a verified token up, cluster-wide.

        Raises:
            InvalidTokenError: it was already used.
            BackendUnavailable: single use cannot be checked.
        """
        ctx = self._ctx
        if not await ctx.ask(ctx.backend.tokens.consume(claims.nonce, claims.expires_at)):
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
