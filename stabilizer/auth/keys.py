"""The keys a JWTAuthenticator verifies with: PEM public keys, secrets, and a JWKS URL's keys.

Each key verifies only algorithms of its own type (``kty``), so an HS token is never checked
against an RSA key's PEM text (algorithm confusion).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import jwt

from stabilizer.errors import AuthUnavailable, ConfigError

logger = logging.getLogger(__name__)

#: Every accepted algorithm and the JWK key type (``kty``) that verifies it.
ALGORITHM_KEY_TYPES: Final[Mapping[str, str]] = {
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP",
}
#: What a PEM key verifies by default, tried in order to recognise the key.
_PEM_DEFAULTS: Final = ("RS256", "ES256", "ES384", "ES512", "EdDSA")
INSTALL: Final = "pip install 'fastapi-stabilizer[jwt]'"


class PublicKey(NamedTuple):
    """A PEM public key, recognised."""

    alg: str  # what the key verifies by default
    kty: str  # its JWK key type: the algorithms it may verify
    key: Any  # a cryptography public key


class PublishedKey(NamedTuple):
    """A JWKS signing key, and whether its JWK names the one algorithm it verifies."""

    jwk: jwt.PyJWK  # bound to the algorithm it names, else PyJWT's default for its type
    named: bool  # its JWK carries the optional "alg" member

    def verifier(self, alg: str) -> Any:
        """What verifies an `alg` token with this key (None: its type verifies no `alg`).

        A key that names its algorithm verifies only that one (PyJWT refuses any other).
        One that names none verifies every RSA algorithm when it is an RSA key (its raw
        key, as for a PEM); an EC key's curve and an OKP key's type fix its algorithm.
        """
        if ALGORITHM_KEY_TYPES.get(alg) != self.jwk.key_type:
            return None  # never an HS token against a public key (algorithm confusion)
        if not self.named and self.jwk.key_type == "RSA":
            return self.jwk.key
        return self.jwk


def _over_tls_or_loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JWKS:
    """The signing keys a JWKS URL publishes, cached for `lifespan` seconds.

    One rule bounds the load on the server: at most one fetch per `refetch_interval`, be
    it the first, a refresh of expired keys, or a refetch for an unknown kid. When a
    refresh fails the last keys stay in use for up to another lifespan. A kid is unknown
    (a token to refuse) only by the JWKS's last answer: while its fetches fail, a kid the
    keys lack cannot be checked.
    """

    def __init__(self, url: str, *, lifespan: float, refetch_interval: float, timeout: float,
                 clock: Callable[[], float]) -> None:
        for name, value in (("jwks_lifespan", lifespan), ("jwks_timeout", timeout),
                            ("jwks_refetch_interval", refetch_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be seconds > 0, got {value!r}")
        try:  # PyJWT's own cache would read its own clock: ours is injected
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        except jwt.PyJWKClientError as exc:
            raise ConfigError(f"jwks_url must be an http(s) URL, got {url!r}") from exc
        if not _over_tls_or_loopback(url):  # whoever is on the path could publish keys
            raise ConfigError(f"jwks_url must be https (plain http only to this machine: "
                              f"localhost or a loopback address), got {url!r}")
        self._url = url
        self._lifespan, self._interval, self._timeout = lifespan, refetch_interval, timeout
        self._clock = clock
        self._keys: dict[str, PublishedKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._failing = False  # the last fetch failed
        self._lock = asyncio.Lock()  # one fetch at a time; waiters then see its result

    def _age(self, now: float) -> float:
        return float("inf") if self._fetched_at is None else now - self._fetched_at

    async def key(self, kid: str) -> PublishedKey | None:
        """The published key named `kid`, or None when the JWKS answered without it.

        Raises:
            AuthUnavailable: the JWKS cannot be fetched, and the keys in hand are too old or
                lack `kid` (whether it publishes that kid now, only the JWKS can say).
        """
        if self._age(self._clock()) < self._lifespan and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            now = self._clock()
            if self._age(now) >= self._lifespan or kid not in self._keys:
                await self._refresh(now)
            if self._age(now) >= 2 * self._lifespan or (self._failing and kid not in self._keys):
                raise AuthUnavailable("cannot fetch the signing keys (JWKS); try again shortly")
            return self._keys.get(kid)

    async def _refresh(self, now: float) -> None:
        """Fetch the keys unless a fetch was attempted within the refetch interval."""
        if self._attempted_at is not None and now - self._attempted_at < self._interval:
            return
        self._attempted_at, self._failing = now, True
        try:
            async with asyncio.timeout(self._timeout):
                keys = await asyncio.to_thread(self._fetch)
        except (jwt.PyJWTError, OSError, ValueError) as exc:  # OSError covers TimeoutError
            logger.warning("JWKS fetch from %s failed (%s: %s); next try in %.0fs at the earliest",
                           self._url, type(exc).__name__, exc, self._interval)
            return
        self._keys, self._fetched_at, self._failing = keys, now, False
        logger.info("JWKS fetched from %s: %d signing keys", self._url, len(keys))

    def _fetch(self) -> dict[str, PublishedKey]:
        """Blocking: the asymmetric signing keys with a kid, first of each kid wins."""
        members = self._client.fetch_data().get("keys")
        if not isinstance(members, list):
            raise jwt.PyJWKSetError("the JWKS has no list of keys")
        keys: dict[str, PublishedKey] = {}
        for member in members:
            if not isinstance(member, dict):
                continue
            try:  # PyJWKSet's rule: a key PyJWT cannot read is skipped
                jwk = jwt.PyJWK(member)
            except jwt.exceptions.MissingCryptographyError:
                raise
            except (jwt.PyJWTError, NotImplementedError) as exc:  # ("alg": "none" raises
                # NotImplementedError: one such member must not fail the whole set)
                logger.warning("JWKS member %r skipped: %s", member.get("kid"),
                               exc or type(exc).__name__)
                continue
            kid, usable = jwk.key_id, jwk.public_key_use in ("sig", None)
            if not kid or not usable or jwk.key_type not in ("RSA", "EC", "OKP"):
                continue  # never take a symmetric (oct) key from a published set
            if (weak := jwk.Algorithm.check_key_length(jwk.key)) is not None:
                logger.warning("JWKS key %r ignored: %s", kid, weak)
                continue
            keys.setdefault(kid, PublishedKey(jwk, named=bool(member.get("alg"))))
        if not keys:
            raise jwt.PyJWKSetError("the JWKS has no usable asymmetric signing key")
        return keys


def key_list(name: str, value: object, kind: Any) -> list[Any]:
    """One key or a non-empty sequence of keys, each a `kind`, as a list (None: none)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str | bytes) else value
    if not isinstance(items, Sequence) or not items or not all(
            isinstance(item, kind) for item in items):
        raise ConfigError(f"{name} must be a key or a non-empty sequence of keys "
                          f"({'strings' if kind is str else 'PEM text'})")
    return list(items)


def load_pem(pem: str | bytes) -> PublicKey:
    """Recognise a PEM public key.

    Raises:
        ConfigError: not a public key of a supported type (a private key is refused: only
            the signer should hold it).
    """
    if "PRIVATE KEY" in (pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem):
        raise ConfigError("public_key got a private key; pass its public half")
    for alg in _PEM_DEFAULTS:
        try:
            key = jwt.get_algorithm_by_name(alg).prepare_key(pem)
        except NotImplementedError as exc:
            raise ConfigError(f"{alg} keys need cryptography: {INSTALL}") from exc
        except Exception:  # not this type; cryptography's own errors are not importable here
            continue
        return PublicKey(alg, ALGORITHM_KEY_TYPES[alg], key)
    raise ConfigError("public_key is not an RSA, EC (P-256/384/521) or Ed25519 public key PEM")


def check_key_lengths(alg: str, secrets: Sequence[bytes], pems: Sequence[PublicKey]) -> None:
    """Refuse keys PyJWT deems too short for `alg` (RFC 7518: an HS256 secret has 32+ bytes)."""
    algorithm = jwt.get_algorithm_by_name(alg)
    kty = ALGORITHM_KEY_TYPES[alg]
    keys = list(secrets) if kty == "oct" else [pem.key for pem in pems if pem.kty == kty]
    for key in keys:
        try:
            weak = algorithm.check_key_length(key)
        except (TypeError, AttributeError):  # an EC key of another curve: not alg's key
            continue
        if weak is not None:
            raise ConfigError(f"a key is too short for {alg}: {weak}")
