"""Every exception stabilizer raises on purpose, rooted at WebSocketStabilizerError.

The nine names documented by fastapi-websocket-stabilizer 1.1.0 keep their meaning; the
others are leaves of those (or of the root) so existing ``except`` clauses keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stabilizer.results import BroadcastResult


class WebSocketStabilizerError(Exception):
    """Root of every exception stabilizer raises on purpose."""


class ConnectionNotFoundError(WebSocketStabilizerError):
    """The client is not connected (on this node, or anywhere for cluster-wide calls)."""


class NotAMemberError(WebSocketStabilizerError, LookupError):
    """The client is not a member of the group an operation needs it in."""


class InvalidClientIdError(ConnectionNotFoundError, ValueError):
    """A client id is not a usable string (empty, too long, or not valid UTF-8).

    It subclasses ConnectionNotFoundError because the seed raised that for an empty id.
    """


class ConnectionLimitExceededError(WebSocketStabilizerError):
    """A node or cluster connection limit refuses a new connection."""


class ConnectionTimeoutError(WebSocketStabilizerError):
    """A client did not answer a ping within the heartbeat timeout."""


class TokenError(WebSocketStabilizerError):
    """Base of the reconnect-token errors."""


class TokenExpiredError(TokenError):
    """A reconnect token is past its lifetime."""


class InvalidTokenError(TokenError):
    """A reconnect token is forged, malformed, for another namespace, or already used."""


class BroadcastFailedError(WebSocketStabilizerError):
    """A broadcast reached nobody although it had recipients; `result` tells who failed."""

    def __init__(self, message: str, result: BroadcastResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class ShutdownError(WebSocketStabilizerError):
    """The node is shutting down: it admits no new connection, shutdown itself failed, or
    an acknowledged send stopped waiting because its node stopped listening (the message
    may have been delivered and handled: outcome unknown)."""


class MemoryLimitExceededError(WebSocketStabilizerError):
    """A per-connection or total memory limit refuses a connection or a piece of user data."""


class ConfigError(WebSocketStabilizerError, ValueError):
    """A configuration value is invalid; the message names the field and the rule."""


class PresenceDisabledError(WebSocketStabilizerError, ValueError):
    """The group's namespace turns presence off (``ChannelOptions(presence=False)``): it
    takes no presence metadata and answers no presence query."""


class WireError(WebSocketStabilizerError):
    """A peer sent an envelope we cannot decode."""


class BackendUnavailable(WebSocketStabilizerError):
    """The shared backend (Redis) cannot be reached right now; loops retry, callers may too."""


class BackendNotReached(BackendUnavailable):
    """The backend was certainly not reached (no connection could be had): the operation
    did not take effect. A plain BackendUnavailable from a write may mean that it did."""


class BackendRefused(BackendUnavailable):
    """The backend answered with an error that waiting will not cure (a key of the
    namespace holding another application's type, a value it cannot take): reachable, but
    refusing. Still a BackendUnavailable, so the loops back off and retry, and a write that
    failed so may have taken effect in part (a script is not rolled back)."""


class AuthenticationError(WebSocketStabilizerError):
    """A client's credentials do not prove an identity (missing, malformed, forged, for
    another audience or issuer, or signed with an unknown key); it is closed with
    AUTH_FAILED (4505)."""


class AuthUnavailable(BackendUnavailable):
    """A client's credentials cannot be checked right now (the identity provider's signing
    keys, a JWKS, cannot be fetched): not a refusal. A connect is closed with
    TRY_AGAIN_LATER (1013) and retry advice, a refresh is answered ``refresh_failed``."""


class CredentialsExpiredError(AuthenticationError):
    """A client's credentials were valid but are past their lifetime; it is closed with
    AUTH_EXPIRED (4003) and should reconnect with fresh ones."""


class UserConnectionLimitError(ConnectionLimitExceededError):
    """A user already holds max_connections_per_user connections across the cluster."""


class RPCError(WebSocketStabilizerError):
    """A remote procedure call did not return a value.

    A procedure raises it to answer with a code, a message and JSON data of its own; any
    other exception is answered with the code ``internal``. The client raises it with the
    server's answer, or with ``timeout`` (no reply in time) or ``disconnected`` (the socket
    closed before the reply: the call may have run). docs/protocol.md, section 6.5, lists
    the codes.
    """

    def __init__(self, code: str, message: str = "", data: Any = None) -> None:
        if not isinstance(code, str) or not 0 < len(code) <= 64:
            raise ValueError(f"an RPCError code is a string of 1 to 64 characters, got {code!r}")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.data = data


class AckTimeoutError(ConnectionTimeoutError):
    """``send_to_client(..., ack=True)``: the message was sent (or kept for the client's
    resumable session) but not acknowledged within the timeout. It may still arrive."""


class AckUnsupportedError(WebSocketStabilizerError):
    """``send_to_client(..., ack=True)`` reached a plain-protocol client: it got the message
    but cannot acknowledge it (acknowledgements need protocol v2)."""


#: What the application's code (a procedure, a hook, a listener) may raise that is its own
#: failure, caught where our tasks run it: SystemExit and KeyboardInterrupt included, as
#: they would otherwise end the event loop and every connection of the node (argparse
#: exits on bad arguments). A task's own cancellation is not among them.
APPLICATION_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit,
                                                          KeyboardInterrupt)
