"""Authentication: identities, credentials and authenticators."""

from __future__ import annotations

from stabilizer.auth.identity import (
    Authenticator,
    AuthFunction,
    CallableAuthenticator,
    Credentials,
    Identity,
    as_authenticator,
)

__all__ = [
    "AuthFunction",
    "Authenticator",
    "CallableAuthenticator",
    "Credentials",
    "Identity",
    "as_authenticator",
]
