"""Who is on the other end of a connection: the Identity an Authenticator returns, the
Credentials it is given, and the protocol every authenticator implements.

An authenticator turns what a client presents (an access token from the v2 ``connect`` or
``refresh`` frame, or, for plain clients, whatever the WebSocket carries: a cookie, a header)
into an Identity, or refuses with AuthenticationError (or its leaf CredentialsExpiredError),
or raises AuthUnavailable (a BackendUnavailable) when it cannot check them right now.
It never sees a reconnect token: those are stabilizer's own and checked elsewhere.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from stabilizer.errors import AuthenticationError
from stabilizer.pure.users import check_user_id, info_json


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user: its id, small public info, and when the credentials expire.

    ``user_id`` addresses the user cluster-wide (``send_to_user``, ``disconnect_user``);
    ``info`` (a JSON object) is shown to whoever lists the user's connections;
    ``expires_at`` (finite Unix seconds) is when a live connection must present fresh
    credentials (None: never).
    """

    user_id: str
    info: Mapping[str, Any] | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        if self.info is not None:
            info_json(self.info)  # raises for info that cannot be stored
        expires = self.expires_at
        if expires is not None and (isinstance(expires, bool)
                                    or not isinstance(expires, int | float)
                                    or not math.isfinite(expires)):
            # (NaN or inf would never expire, and NaN is no JSON for the session frame)
            raise AuthenticationError("identity expires_at must be finite Unix seconds or None")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented.

    ``token``: the access token of a v2 ``connect`` or ``refresh`` frame (None for a plain
    client, or a v2 client that sent none). ``websocket``: the connection's WebSocket
    (headers, cookies, query parameters; the application's framework object).
    ``params``: the ``params`` object of the v2 ``connect`` frame (empty otherwise).
    ``refreshing``: True when a live connection presents fresh credentials.
    """

    token: str | None
    websocket: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    refreshing: bool = False


@runtime_checkable
class Authenticator(Protocol):
    """Turns credentials into an Identity."""

    async def authenticate(self, credentials: Credentials) -> Identity:
        """Return the identity the credentials prove.

        Raises:
            CredentialsExpiredError: the credentials were valid but are past their lifetime.
            AuthenticationError: anything else (missing, malformed, forged, wrong audience).
            AuthUnavailable: they cannot be checked right now (what checks them is out of
                reach); any BackendUnavailable is taken the same way: come back later.
        """
        ...


AuthFunction = Callable[[Credentials], Awaitable[Identity | None] | Identity | None]


class CallableAuthenticator:
    """An Authenticator made of a function (sync or async) returning an Identity, or None
    to refuse; for cookie and session apps that already know their users."""

    def __init__(self, function: AuthFunction) -> None:
        self._function = function

    async def authenticate(self, credentials: Credentials) -> Identity:
        """Call the function; None (or a non-Identity) refuses."""
        result = self._function(credentials)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Identity):
            raise AuthenticationError("not authenticated")
        return result


def as_authenticator(value: Authenticator | AuthFunction | None) -> Authenticator | None:
    """Accept an Authenticator, or a function that becomes a CallableAuthenticator."""
    if value is None or isinstance(value, Authenticator):
        return value
    if callable(value):
        return CallableAuthenticator(value)
    raise TypeError(f"authenticator must be an Authenticator or a callable, got {value!r}")
