"""JWTAuthenticator: JSON Web Tokens as identities (with auth/keys.py, the only modules
importing PyJWT).

Each key verifies only algorithms of its own type, so an HS token is never checked against
an RSA key's PEM text (algorithm confusion), and "none" is never accepted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import jwt

from stabilizer.auth.identity import Credentials, Identity
from stabilizer.auth.keys import (
    ALGORITHM_KEY_TYPES,
    JWKS,
    check_key_lengths,
    key_list,
    load_pem,
)
from stabilizer.auth.origins import behind_tls_proxy, check_origins, origin_allowed
from stabilizer.errors import (
    AuthenticationError,
    AuthUnavailable,
    ConfigError,
    CredentialsExpiredError,
)
from stabilizer.pure.text import JSONValue

logger = logging.getLogger(__name__)

#: The longest token accepted (characters); longer input is refused before any parsing.
MAX_TOKEN_LENGTH: Final = 16_384
#: The longest ``kid`` header looked up in a JWKS.
MAX_KID_LENGTH: Final = 256
_JWKS_DEFAULTS: Final = ("RS256", "ES256")
# PyJWT's refusals, most specific first, and what we say instead of its words.
_REFUSALS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ImmatureSignatureError, "token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "token is for another audience"),
    (jwt.InvalidIssuerError, "token is from another issuer"),
    (jwt.InvalidAlgorithmError, "token algorithm does not match its key"),
    (jwt.InvalidIssuedAtError, "token has an invalid iat claim"),
    (jwt.exceptions.InvalidSubjectError, "token claim 'sub' must be a string"),
    (jwt.exceptions.InvalidJTIError, "token claim 'jti' must be a string"),
    (jwt.InvalidTokenError, "token is malformed or invalid"),
)


class JWTAuthenticator:
    """An Authenticator that accepts signed JWTs.

    Keys: ``secret`` (HS256 keyring: the first key signs ``issue()``, every key verifies),
    ``public_key`` (PEM: RSA, EC or Ed25519; several for rotation), ``jwks_url`` (keys by
    ``kid``, cached ``jwks_lifespan`` seconds, at most one fetch per
    ``jwks_refetch_interval``, each bounded by ``jwks_timeout``; ``clock`` drives the cache;
    a token the keys that can be fetched do not verify is refused, one that cannot be
    checked while the JWKS is out of reach raises AuthUnavailable: come back later; a
    published key verifies the "alg" its JWK names, or, naming none, any of ``algorithms``
    of its type: RS*/PS* for RSA, the curve's ES* for EC, EdDSA for Ed25519).
    ``algorithms`` defaults to what the keys imply. Claims: ``exp`` is required (``require``
    lists the claims a token must carry; ``()`` admits tokens that never expire); ``nbf``
    and ``iat`` are checked when present, ``aud`` and ``iss`` when configured (a token with
    an ``aud`` is refused when no ``audience`` is); ``leeway`` seconds absorb clock skew,
    so the identity expires at ``exp`` plus ``leeway`` (when the token stops being accepted).
    ``user_claim`` is the user id, ``info_claim`` (a JSON object) the connection's info.
    The token comes from the frame, else (``header``) an ``Authorization: Bearer`` header,
    else the ``cookie`` named; never from the URL. A browser sends its cookies with a
    handshake that a page of any site starts: the cookie is taken only when the handshake's
    ``Origin`` is one of ``origins`` (``scheme://host[:port]``; ``["*"]`` admits every site)
    or, by default, the socket's own origin (its scheme and ``Host``: behind a proxy that
    terminates TLS, see auth/origins.py), or when it has no ``Origin`` (not a browser).
    """

    def __init__(
        self, *, secret: str | Sequence[str] | None = None,
        public_key: str | bytes | Sequence[str | bytes] | None = None,
        jwks_url: str | None = None, algorithms: Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None, issuer: str | None = None,
        leeway: float = 0.0, user_claim: str = "sub", info_claim: str | None = None,
        require: Sequence[str] = ("exp",), header: bool = True, cookie: str | None = None,
        origins: Sequence[str] | None = None, jwks_lifespan: float = 300.0,
        jwks_refetch_interval: float = 10.0, jwks_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Check and keep the options (see the class docstring).

        Raises:
            ConfigError: no key source, a short secret, an unreadable or private PEM, an
                unknown algorithm (or "none"), an algorithm no configured key can verify, or
                malformed origins (or origins without a cookie).
        """
        self._secrets = tuple(key.encode() for key in key_list("secret", secret, str))
        self._pems = [load_pem(pem) for pem in key_list("public_key", public_key, str | bytes)]
        self._jwks = None if jwks_url is None else JWKS(
            jwks_url, lifespan=jwks_lifespan, refetch_interval=jwks_refetch_interval,
            timeout=jwks_timeout, clock=clock)
        if not (self._secrets or self._pems or self._jwks):
            raise ConfigError("JWTAuthenticator needs a secret, a public_key or a jwks_url")
        self._algorithms = self._check_algorithms(algorithms)
        self._audience = _audience(audience)
        for name, value in (("user_claim", user_claim), ("info_claim", info_claim),
                            ("cookie", cookie), ("issuer", issuer)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not (
                0 <= leeway < math.inf):
            raise ConfigError(f"leeway must be seconds >= 0, got {leeway!r}")
        if isinstance(require, str) or not all(isinstance(c, str) for c in require):
            raise ConfigError("require must be a sequence of claim names, e.g. ('exp',)")
        self._issuer, self._leeway, self._require = issuer, float(leeway), list(require)
        self._user_claim, self._info_claim = user_claim, info_claim
        self._header, self._cookie = header, cookie
        if origins is not None and cookie is None:
            raise ConfigError("origins apply to the cookie: set cookie= too, or drop origins")
        self._origins = check_origins(origins)
        self._proxy_hinted = False  # said once why an https page's cookie met a ws socket

    def _check_algorithms(self, algorithms: Sequence[str] | None) -> tuple[str, ...]:
        """The accepted algorithms: the given ones, each with a key that can verify it, or
        those the keys imply."""
        if algorithms is None:
            implied = ["HS256"] if self._secrets else []
            implied += [pem.alg for pem in self._pems]
            implied += list(_JWKS_DEFAULTS) if self._jwks else []
            algorithms = list(dict.fromkeys(implied))
        if isinstance(algorithms, str) or not algorithms:
            raise ConfigError("algorithms must be a non-empty sequence such as ['RS256']")
        key_types = {pem.kty for pem in self._pems} | ({"oct"} if self._secrets else set())
        key_types |= {"RSA", "EC", "OKP"} if self._jwks else set()
        for alg in algorithms:
            if alg not in ALGORITHM_KEY_TYPES:
                raise ConfigError(f"algorithm {alg!r} is not supported; use one of "
                                  f"{', '.join(ALGORITHM_KEY_TYPES)}")
            if ALGORITHM_KEY_TYPES[alg] not in key_types:
                need = "a secret" if alg.startswith("HS") else "a matching public_key or jwks_url"
                raise ConfigError(f"algorithm {alg} has no key to verify it: give {need}")
            check_key_lengths(alg, self._secrets, self._pems)
        return tuple(algorithms)

    async def authenticate(self, credentials: Credentials) -> Identity:
        """Return the identity a valid token proves (a refresh is checked the same way).

        Raises:
            CredentialsExpiredError: the token is past its ``exp`` (beyond ``leeway``).
            AuthenticationError: no token, or a malformed, forged, unknown-key, not-yet-valid
                or wrong-audience/issuer one, or unusable ``sub`` or info claims.
            AuthUnavailable: the JWKS cannot be fetched and the keys in hand do not verify
                the token (it may be signed with one the JWKS publishes).
        """
        token = self._token_of(credentials)
        try:  # unverified: only alg and kid are read, to pick the keys
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
            raise AuthenticationError("token is malformed (not a signed JWT)") from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthenticationError(
                f"token algorithm is not accepted; use {', '.join(self._algorithms)}")
        keys, outage = await self._keys_for(alg, header.get("kid"))
        claims = self._decode(token, alg, keys)
        if claims is None:
            if outage is not None:  # the JWKS may publish the key that signed it
                raise outage
            raise AuthenticationError("token signature matches no configured key")
        return self._identity(claims)

    def _token_of(self, credentials: Credentials) -> str:
        """The token: the frame's, else the socket's Bearer header or cookie (never the
        query string: URLs end up in access logs)."""
        token = credentials.token
        if token is None and (token := self._socket_token(credentials.websocket)) is None:
            places = ["the connect frame"] + ["an Authorization: Bearer header"] * self._header
            places += [f"the {self._cookie!r} cookie"] if self._cookie else []
            raise AuthenticationError(f"no token; send one in {' or '.join(places)}")
        if not isinstance(token, str) or not token:
            raise AuthenticationError("the token must be a non-empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError(f"the token is over {MAX_TOKEN_LENGTH} characters")
        return token

    def _socket_token(self, websocket: object) -> str | None:
        if self._header:
            value = _get(getattr(websocket, "headers", None), "authorization", "Authorization")
            if isinstance(value, str):
                scheme, _, rest = value.strip().partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    return rest.strip()
        if self._cookie is not None:
            value = _get(getattr(websocket, "cookies", None), self._cookie)
            if isinstance(value, str) and value:
                if not origin_allowed(websocket, self._origins):
                    self._hint_proxy(websocket)
                    raise AuthenticationError(self._cross_site(websocket))
                return value
        return None

    def _hint_proxy(self, websocket: object) -> None:
        """Say once (a deployment's mistake, not a client's) why the socket's own https
        pages are refused when it is served as ws."""
        if self._origins is None and not self._proxy_hinted and behind_tls_proxy(websocket):
            self._proxy_hinted = True
            logger.warning(
                "refused the cookie of an https page of the socket's own host: the socket is "
                "served as ws (a proxy terminating TLS?); let the ASGI server trust the "
                "proxy's X-Forwarded-Proto (uvicorn --forwarded-allow-ips) or list the pages "
                "in origins=")

    def _cross_site(self, websocket: object) -> str:
        """Why a cookie sent from another site's page is refused (short: a close reason)."""
        origin = _get(getattr(websocket, "headers", None), "origin", "Origin")
        shown = origin[:40] if isinstance(origin, str) else origin
        return (f"cross-site request refused: origin {shown!r} may not use the cookie; "
                "see origins=")

    async def _keys_for(self, alg: str, kid: object) -> tuple[list[Any], AuthUnavailable | None]:
        """The keys that may have signed an `alg` token (only keys of alg's own type), and
        the outage that kept the JWKS's key for `kid` out of them, if one did."""
        kty = ALGORITHM_KEY_TYPES[alg]
        if kty == "oct":
            return list(self._secrets), None
        keys: list[Any] = [pem.key for pem in self._pems if pem.kty == kty]
        if self._jwks is None:
            return keys, None
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            if keys:
                return keys, None
            raise AuthenticationError("token has no usable kid header; the JWKS needs one")
        outage = None
        try:
            found = await self._jwks.key(kid)
        except AuthUnavailable as exc:
            if not keys:
                raise
            found, outage = None, exc  # the PEM keys may still verify
        if found is not None and (verifier := found.verifier(alg)) is not None:
            keys.append(verifier)
        if not keys:
            raise AuthenticationError("token is signed with a key the JWKS does not publish")
        return keys, outage

    def _decode(self, token: str, alg: str, keys: list[Any]) -> dict[str, Any] | None:
        """The verified claims, trying each key (None: no key's signature matches);
        PyJWT's refusals become ours."""
        for key in keys:
            try:
                return jwt.decode(
                    token, key, algorithms=[alg], audience=self._audience,
                    issuer=self._issuer, leeway=self._leeway,
                    options={"require": self._require})
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # another key of the ring may match
            except jwt.ExpiredSignatureError as exc:
                raise CredentialsExpiredError(_expired_message(token)) from exc
            except jwt.MissingRequiredClaimError as exc:
                raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from exc
            except jwt.PyJWTError as exc:  # say what is wrong, never in PyJWT's words
                reason = next((why for kind, why in _REFUSALS if isinstance(exc, kind)),
                              "token cannot be verified")
                raise AuthenticationError(reason) from exc
            except (ValueError, TypeError, RecursionError) as exc:
                raise AuthenticationError("token is malformed") from exc
        return None

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        user_id = claims.get(self._user_claim)
        if user_id is None:
            raise AuthenticationError(f"token has no {self._user_claim!r} claim")
        if not isinstance(user_id, str):
            raise AuthenticationError(f"token claim {self._user_claim!r} must be a string")
        info = None
        if self._info_claim is not None:
            info = claims.get(self._info_claim)
            if info is not None and not isinstance(info, dict):
                raise AuthenticationError(
                    f"token claim {self._info_claim!r} must be a JSON object")
        exp = claims.get("exp")
        if exp is None:
            return Identity(user_id, info)
        try:  # (PyJWT reads "exp": "1796000000" as a number too: we would see no expiry)
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                raise TypeError(exp)
            return Identity(user_id, info, float(exp) + self._leeway)
        except (TypeError, OverflowError) as exc:
            raise AuthenticationError(
                "token claim 'exp' must be a number (Unix seconds)") from exc

    def issue(self, user_id: str, *, ttl: float, info: Mapping[str, JSONValue] | None = None,
              **claims: JSONValue) -> str:
        """Sign an HS token for `user_id` valid `ttl` seconds from now, with the configured
        audience and issuer, `info` under ``info_claim`` and `claims` on top (tests, examples).

        Raises:
            ConfigError: no secret, no HS algorithm accepted, or `info` without info_claim.
        """
        hs = [alg for alg in self._algorithms if alg.startswith("HS")]
        if not self._secrets or not hs:
            raise ConfigError("issue() signs with an HS algorithm and needs a secret")
        now = time.time()
        payload: dict[str, JSONValue] = {self._user_claim: user_id, "iat": int(now),
                                         "exp": int(now + ttl)}
        if self._audience:
            payload["aud"] = self._audience[0]
        if self._issuer is not None:
            payload["iss"] = self._issuer
        if info is not None:
            if self._info_claim is None:
                raise ConfigError("issue(info=...) needs info_claim to be set")
            payload[self._info_claim] = dict(info)
        payload.update(claims)
        return jwt.encode(payload, self._secrets[0], algorithm=hs[0])


def _audience(audience: str | Sequence[str] | None) -> list[str] | None:
    if audience is None:
        return None
    items = [audience] if isinstance(audience, str) else list(audience)
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigError("audience must be a non-empty string or sequence of strings")
    return items


def _get(mapping: object, *names: str) -> object:
    getter = getattr(mapping, "get", None)
    if not callable(getter):
        return None
    for name in names:
        if (value := getter(name)) is not None:
            return value
    return None


def _expired_message(token: str) -> str:
    """How long ago a token whose signature verified expired."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        exp = None
    ago = f" {max(0.0, time.time() - exp):.0f}s ago" if isinstance(exp, int | float) else ""
    return f"token expired{ago}; connect again with a fresh one"
