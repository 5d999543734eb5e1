"""Reconnect tokens: sign, verify, rotate keys. Pure: no I/O, the clock is an argument.

Format: ``s1.<key id>.<payload>.<signature>``, every part URL-safe base64 without padding, so a
token survives query strings and client ids may contain any character (the seed split on ".").
The payload is msgpack ``[namespace, client_id, issued_ms, expires_ms, nonce]``. The signature
is HMAC-SHA256 over ``s1.<key id>.<payload>`` with the key the key id names. The first key of
the keyring signs; every key verifies. Rotation that refuses no token takes two deploys:
first add the new key behind the old one on every replica (old signs, both verify); once all
run that, put the new key first (new signs); drop the old one a token lifetime later.
Single use is not decided here: the backend records each nonce once (SET NX in Redis).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgpack

from stabilizer.errors import InvalidTokenError, TokenExpiredError

TOKEN_PREFIX: Final = "s1"
MAX_TOKEN_LENGTH: Final = 2048
_NONCE_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    client_id: str
    nonce: str
    issued_at: float
    expires_at: float


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def key_id(key: bytes) -> str:
    """Name a key without revealing it: the first 6 bytes of its SHA-256, base64."""
    return _b64encode(hashlib.sha256(b"stabilizer-kid:" + key).digest()[:6])


def key_id_of(token: object) -> str | None:
    """The key id a token names, or None when it does not have a token's shape."""
    parts = _parts(token)
    return parts[1] if parts is not None else None


def _parts(token: object) -> list[str] | None:
    """A token's four parts (prefix, key id, payload, signature); None for anything that
    does not have a token's shape."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    return parts if len(parts) == 4 and parts[0] == TOKEN_PREFIX else None


def _fields(payload: str) -> tuple[str, str, int, int, str]:
    """A payload's (namespace, client id, issued ms, expires ms, nonce), unverified.

    Raises:
        InvalidTokenError: it is not such a tuple.
    """
    try:
        fields = msgpack.unpackb(_b64decode(payload), strict_map_key=True)
        namespace, client_id, issued_ms, expires_ms, nonce = fields
    except (ValueError, TypeError, binascii.Error, UnicodeError,
            msgpack.UnpackException) as exc:
        raise InvalidTokenError("token payload is malformed") from exc
    valid = (
        isinstance(namespace, str) and isinstance(client_id, str) and isinstance(nonce, str)
        and isinstance(issued_ms, int) and isinstance(expires_ms, int)
    )
    if not valid:
        raise InvalidTokenError("token payload has fields of the wrong type")
    return namespace, client_id, issued_ms, expires_ms, nonce


class TokenCodec:
    """Signs and verifies reconnect tokens for one namespace with a keyring."""

    def __init__(self, keys: Sequence[bytes], namespace: str) -> None:
        if not keys:
            raise ValueError("a token codec needs at least one key")
        self._signing_key = keys[0]
        self._signing_kid = key_id(keys[0])
        self._keys = {key_id(key): key for key in keys}
        self._namespace = namespace

    @staticmethod
    def generate_key() -> bytes:
        """Return a fresh random 32-byte key."""
        return secrets.token_bytes(32)

    def sign(self, client_id: str, *, now: float, ttl: float) -> str:
        """Return a token for `client_id` valid from `now` for `ttl` seconds."""
        nonce = _b64encode(secrets.token_bytes(_NONCE_BYTES))
        issued_ms = int(now * 1000)
        body = msgpack.packb(
            [self._namespace, client_id, issued_ms, issued_ms + int(ttl * 1000), nonce]
        )
        head = f"{TOKEN_PREFIX}.{self._signing_kid}.{_b64encode(body)}"
        mac = hmac.new(self._signing_key, head.encode("ascii"), hashlib.sha256).digest()
        return f"{head}.{_b64encode(mac)}"

    def knows(self, kid: str) -> bool:
        """True when a key of this keyring has the key id `kid`."""
        return kid in self._keys

    def verify(self, token: object, *, now: float) -> TokenClaims:
        """Check signature, namespace and expiry; return the claims.

        Raises:
            InvalidTokenError: malformed, forged, signed by an unknown key, or foreign namespace.
            TokenExpiredError: authentic but past its lifetime.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError("token must be a non-empty string of at most 2048 characters")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            raise InvalidTokenError("token is malformed (expected s1.<kid>.<payload>.<sig>)")
        _, kid, payload, signature = parts
        key = self._keys.get(kid)
        if key is None:
            raise InvalidTokenError("token is signed by a key this node does not know")
        head = f"{TOKEN_PREFIX}.{kid}.{payload}"
        expected = hmac.new(key, head.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        # Compare the canonical text: lenient base64 would accept altered spellings.
        if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"),
                                   _b64encode(expected).encode("ascii")):
            raise InvalidTokenError("token signature does not match; it was altered or forged")
        claims = self._decode_payload(payload)
        if claims.expires_at <= now:
            raise TokenExpiredError(
                f"token expired {now - claims.expires_at:.0f}s ago; request a new one"
            )
        return claims

    def _decode_payload(self, payload: str) -> TokenClaims:
        namespace, client_id, issued_ms, expires_ms, nonce = _fields(payload)
        if namespace != self._namespace:
            raise InvalidTokenError("token was issued for another namespace")
        return TokenClaims(client_id, nonce, issued_ms / 1000, expires_ms / 1000)

def claimed_client_id(token: object) -> str | None:
    """The client id a token's payload names, unverified (None when it names none): only for
    choosing which client a connection that names none is; the token is verified, and
    checked against that client, when it is spent."""
    parts = _parts(token)
    if parts is None:
        return None
    try:
        return _fields(parts[2])[1]
    except InvalidTokenError:
        return None
