"""The close code and reason a session refuses a socket with, for each expected refusal."""

from __future__ import annotations

import logging

from stabilizer.config import CloseCode
from stabilizer.errors import (
    AuthenticationError,
    CredentialsExpiredError,
    InvalidClientIdError,
    InvalidTokenError,
    ShutdownError,
    TokenExpiredError,
    UserConnectionLimitError,
)
from stabilizer.node.context import NodeContext
from stabilizer.pure.positions import PositionsError
from stabilizer.pure.text import retry_advice
from stabilizer.pure.v2 import FrameTooBigError, ProtocolError
from stabilizer.services.closing import shutdown_reason

logger = logging.getLogger(__name__)


def refusal(ctx: NodeContext, client_id: str | None, exc: Exception) -> tuple[CloseCode, str]:
    """The close code and reason of an expected refusal of `client_id`."""
    jitter = ctx.config.retry_jitter
    if isinstance(exc, InvalidClientIdError):
        return CloseCode.INVALID_CLIENT_ID, str(exc)
    if isinstance(exc, FrameTooBigError):
        return CloseCode.MESSAGE_TOO_BIG, str(exc)
    if isinstance(exc, ProtocolError | PositionsError):
        detail = f"bad positions: {exc}" if isinstance(exc, PositionsError) else str(exc)
        return CloseCode.POLICY_VIOLATION, detail
    if isinstance(exc, CredentialsExpiredError):
        return CloseCode.AUTH_EXPIRED, "credentials expired"
    if isinstance(exc, AuthenticationError):
        return CloseCode.AUTH_FAILED, str(exc)
    if isinstance(exc, TokenExpiredError):
        return CloseCode.TOKEN_EXPIRED, str(exc)
    if isinstance(exc, InvalidTokenError):
        return CloseCode.INVALID_TOKEN, str(exc)
    if isinstance(exc, ShutdownError):
        code = ctx.shutdown_code
        return code, shutdown_reason(code, jitter)
    logger.info("refusing client %r: %s", client_id, exc)
    if isinstance(exc, UserConnectionLimitError):
        return CloseCode.USER_LIMIT, retry_advice(jitter)
    return CloseCode.TRY_AGAIN_LATER, retry_advice(jitter)
