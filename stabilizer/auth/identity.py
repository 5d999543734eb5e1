"""Who is on the other end of a connection: the Identity an Authenticator returns, the
Credentials it is given, and the protocol every authenticator implements.

An authenticator turns what a client presents (an access token from the v2 ``connect`` or
``refresh`` frame, or, for plain clients, whatever the WebSocket carries: a cookie, a header)
into an Identity, or refuses with AuthenticationError (or its leaf CredentialsExpiredError).
It never sees a reconnect token: those are stabilizer's own and checked elsewhere.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from stabilizer.errors import AuthenticationError

#: The largest identity ``info`` (as compact JSON) a connection may carry: it is stored in
#: the user's presence entry on every connect.
MAX_INFO_BYTES: Final = 2048
#: The longest user id (characters).
MAX_USER_ID_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user: its id, small public info, and when the credentials expire.

    ``user_id`` addresses the user cluster-wide (``send_to_user``, ``disconnect_user``);
    ``info`` (a JSON object) is shown to whoever lists the user's connections;
    ``expires_at`` (Unix seconds) is when a live connection must present fresh credentials
    (None: never).
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
                                    or not isinstance(expires, int | float)):
            raise AuthenticationError("identity expires_at must be Unix seconds or None")


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


def check_user_id(user_id: object) -> str:
    """Return `user_id` if usable: a non-empty string of at most 256 characters, valid
    UTF-8.

    Raises:
        AuthenticationError: it is not.
    """
    if not isinstance(user_id, str) or not user_id:
        raise AuthenticationError("the user id must be a non-empty string")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise AuthenticationError(f"the user id is over {MAX_USER_ID_LENGTH} characters")
    if not user_id.isascii():
        try:
            user_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AuthenticationError("the user id is not valid Unicode text") from exc
    return user_id


def info_json(info: Mapping[str, Any] | None) -> str:
    """The compact JSON of an identity's info ("" for none).

    Raises:
        AuthenticationError: not a JSON object, or over MAX_INFO_BYTES.
    """
    if info is None:
        return ""
    if not isinstance(info, Mapping):
        raise AuthenticationError("identity info must be a JSON object")
    try:
        text = json.dumps(dict(info), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuthenticationError(f"identity info is not JSON-serializable: {exc}") from exc
    if len(text.encode("utf-8", "surrogatepass")) > MAX_INFO_BYTES:
        raise AuthenticationError(f"identity info is over {MAX_INFO_BYTES} bytes as JSON")
    return text
