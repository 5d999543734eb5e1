"""Authentication: identities, credentials and authenticators.

``JWTAuthenticator`` is loaded on first use, so that importing this package never imports
PyJWT (the ``jwt`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabilizer.auth.identity import (
    Authenticator,
    AuthFunction,
    CallableAuthenticator,
    Credentials,
    Identity,
    as_authenticator,
)
from stabilizer.auth.origins import origin_allowed

if TYPE_CHECKING:
    from stabilizer.auth.jwt import JWTAuthenticator

__all__ = [
    "AuthFunction",
    "Authenticator",
    "CallableAuthenticator",
    "Credentials",
    "Identity",
    "JWTAuthenticator",
    "as_authenticator",
    "origin_allowed",
]


def __getattr__(name: str) -> object:
    """Import JWTAuthenticator on first access.

    Raises:
        ImportError: PyJWT is not installed (the message says how to install it).
    """
    if name != "JWTAuthenticator":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from stabilizer.auth.jwt import JWTAuthenticator
    except ModuleNotFoundError as exc:
        if exc.name != "jwt":
            raise
        raise ImportError(
            "JWTAuthenticator needs PyJWT: pip install 'fastapi-stabilizer[jwt]'"
        ) from exc
    return JWTAuthenticator
