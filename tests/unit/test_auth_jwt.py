"""JWTAuthenticator: keyrings, PEM keys, claims, refusals, token sources, what errors say."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.websockets import WebSocket

import stabilizer.auth
from stabilizer.auth import Credentials, Identity, JWTAuthenticator
from stabilizer.auth.identity import Authenticator
from stabilizer.errors import AuthenticationError, ConfigError, CredentialsExpiredError
from stabilizer.pure.users import MAX_INFO_BYTES

KEY_A = "a-first-secret-of-32-characters!"
KEY_B = "b-second-secret-of-32-characters"
OTHER = "x-someone-elses-secret-32-chars!"
HOUR = 3600


def now() -> int:
    return int(time.time())


def sign(claims: Mapping[str, Any], key: Any = KEY_A, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(dict(claims), key, algorithm=alg, headers=headers or None)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": now() + HOUR, **extra}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def forge_hs256(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand, so any bytes (an RSA PEM) can serve as its secret."""
    head = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(secret, head.encode("ascii"), hashlib.sha256).digest()
    return f"{head}.{b64(mac)}"


def creds(token: str | None, websocket: object = None, *, refreshing: bool = False
          ) -> Credentials:
    return Credentials(token=token, websocket=websocket, refreshing=refreshing)


@dataclass
class KeyPair:
    private: bytes
    public: bytes


def pem_pair(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> KeyPair:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private, public)


@pytest.fixture(scope="module")
def rsa_keys() -> KeyPair:
    return pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def rsa_keys_2() -> KeyPair:
    return pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_keys() -> KeyPair:
    return pem_pair(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def hs() -> JWTAuthenticator:
    return JWTAuthenticator(secret=[KEY_A, KEY_B])


def starlette_socket(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> WebSocket:
    scope = {"type": "websocket", "path": "/ws", "headers": headers, "query_string": query}

    async def never(*_: object) -> Any:
        raise AssertionError("the authenticator must not touch the socket's I/O")

    return WebSocket(scope, never, never)


@dataclass
class PlainSocket:
    """Not a Starlette WebSocket: plain mappings (tests and other frameworks)."""

    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)


async def refusal(auth: JWTAuthenticator, token: str | None, websocket: object = None
                  ) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(creds(token, websocket))
    return caught.value


def assert_no_leak(error: BaseException, token: str) -> None:
    """Neither the message nor the whole chained traceback quotes the token or a part of it."""
    text = "".join(traceback.format_exception(error))
    assert not token or token not in str(error)
    for part in (token, *token.split(".")):
        if len(part) >= 8:
            assert part not in text


# ----------------------------------------------------------------------------- accepted


def test_it_is_an_authenticator(hs: JWTAuthenticator) -> None:
    assert isinstance(hs, Authenticator)


@pytest.mark.parametrize("key", [KEY_A, KEY_B])
async def test_every_key_of_the_keyring_verifies(hs: JWTAuthenticator, key: str) -> None:
    exp = now() + HOUR
    identity = await hs.authenticate(creds(sign({"sub": "alice", "exp": exp}, key)))
    assert identity == Identity("alice", None, float(exp))


async def test_issue_signs_with_the_first_key_only() -> None:
    token = JWTAuthenticator(secret=[KEY_A, KEY_B]).issue("bob", ttl=60)
    assert (await JWTAuthenticator(secret=KEY_A).authenticate(creds(token))).user_id == "bob"
    with pytest.raises(AuthenticationError, match="signature"):
        await JWTAuthenticator(secret=KEY_B).authenticate(creds(token))


async def test_issue_sets_audience_issuer_info_and_extra_claims() -> None:
    auth = JWTAuthenticator(secret=KEY_A, audience=["app", "other"], issuer="https://idp",
                            info_claim="profile")
    token = auth.issue("carol", ttl=120, info={"name": "Carol"}, role="admin")
    payload = jwt.decode(token, KEY_A, algorithms=["HS256"], audience="app")
    assert payload["aud"] == "app"
    assert payload["iss"] == "https://idp"
    assert payload["role"] == "admin"
    assert payload["exp"] - payload["iat"] in (119, 120)
    identity = await auth.authenticate(creds(token))
    assert identity.user_id == "carol"
    assert identity.info == {"name": "Carol"}
    assert identity.expires_at == float(payload["exp"])


async def test_rs256_and_es256_with_pem_keys(rsa_keys: KeyPair, ec_keys: KeyPair) -> None:
    auth = JWTAuthenticator(public_key=[rsa_keys.public, ec_keys.public.decode()])
    for private, alg in ((rsa_keys.private, "RS256"), (ec_keys.private, "ES256")):
        identity = await auth.authenticate(creds(sign(claims(), private, alg)))
        assert identity.user_id == "alice"


async def test_several_public_keys_rotate(rsa_keys: KeyPair, rsa_keys_2: KeyPair) -> None:
    auth = JWTAuthenticator(public_key=[rsa_keys.public, rsa_keys_2.public])
    for pair in (rsa_keys, rsa_keys_2):
        assert (await auth.authenticate(creds(sign(claims(), pair.private, "RS256")))).user_id
    only_new = JWTAuthenticator(public_key=rsa_keys_2.public)
    error = await refusal(only_new, sign(claims(), rsa_keys.private, "RS256"))
    assert "matches no configured key" in str(error)


async def test_a_refresh_is_checked_the_same_way(hs: JWTAuthenticator) -> None:
    identity = await hs.authenticate(creds(sign(claims()), refreshing=True))
    assert identity.user_id == "alice"
    with pytest.raises(CredentialsExpiredError):
        await hs.authenticate(creds(sign(claims(exp=now() - HOUR)), refreshing=True))


async def test_a_token_without_exp_is_refused_unless_not_required() -> None:
    token = sign({"sub": "alice"})
    error = await refusal(JWTAuthenticator(secret=KEY_A), token)
    assert "'exp'" in str(error)
    identity = await JWTAuthenticator(secret=KEY_A, require=()).authenticate(creds(token))
    assert identity == Identity("alice")


async def test_leeway_admits_small_clock_skew() -> None:
    auth = JWTAuthenticator(secret=KEY_A, leeway=600)
    assert await auth.authenticate(creds(sign(claims(exp=now() - 60))))
    assert await auth.authenticate(creds(sign(claims(nbf=now() + 60))))


async def test_leeway_moves_the_identitys_expiry_too() -> None:
    """The server closes (and refuses) at the identity's expires_at: with leeway, a token is
    accepted until exp + leeway, so that is when the identity expires."""
    exp = now() - 5
    identity = await JWTAuthenticator(secret=KEY_A, leeway=60).authenticate(
        creds(sign(claims(exp=exp))))
    assert identity.expires_at == exp + 60
    plain = await JWTAuthenticator(secret=KEY_A).authenticate(creds(sign(claims())))
    assert plain.expires_at == float(claims()["exp"])


@pytest.mark.parametrize("exp", [str(now() + HOUR), f" {now() + HOUR}"])
async def test_an_exp_that_is_not_a_number_is_refused(exp: str) -> None:
    """A numeric string passed PyJWT's check but gave an identity that never expired (RFC
    7519: a NumericDate is a JSON number)."""
    error = await refusal(JWTAuthenticator(secret=KEY_A), sign(claims(exp=exp)))
    assert str(error) == "token claim 'exp' must be a number (Unix seconds)"


async def test_another_user_claim() -> None:
    auth = JWTAuthenticator(secret=KEY_A, user_claim="email")
    identity = await auth.authenticate(creds(sign(claims(email="a@example.com"))))
    assert identity.user_id == "a@example.com"


# ----------------------------------------------------------------------------- refused


async def test_an_expired_token_is_credentials_expired(hs: JWTAuthenticator) -> None:
    token = sign(claims(exp=now() - HOUR))
    with pytest.raises(CredentialsExpiredError, match=r"token expired \d+s ago") as caught:
        await hs.authenticate(creds(token))
    assert_no_leak(caught.value, token)


@pytest.mark.parametrize(
    ("extra", "options", "reason"),
    [
        ({"nbf": "soon"}, {}, "malformed"),
        ({"nbf": HOUR}, {}, "not valid yet"),
        ({"aud": "other-app"}, {"audience": "app"}, "another audience"),
        ({}, {"audience": "app"}, "'aud'"),
        ({"aud": "app"}, {}, "another audience"),  # a token for someone: not for us
        ({"iss": "https://evil"}, {"issuer": "https://idp"}, "another issuer"),
        # (a part of the issuer: PyJWT 2.10.0 tested a string issuer with `in`)
        ({"iss": "https://id"}, {"issuer": "https://idp"}, "another issuer"),
        ({"iss": ""}, {"issuer": "https://idp"}, "another issuer"),
        ({}, {"issuer": "https://idp"}, "'iss'"),
    ],
)
async def test_claims_that_do_not_fit_are_refused(
    extra: dict[str, Any], options: dict[str, Any], reason: str
) -> None:
    if extra.get("nbf") == HOUR:
        extra = {"nbf": now() + HOUR}
    token = sign(claims(**extra))
    error = await refusal(JWTAuthenticator(secret=KEY_A, **options), token)
    assert type(error) is AuthenticationError
    assert reason in str(error)
    assert_no_leak(error, token)


async def test_a_tampered_payload_is_refused(hs: JWTAuthenticator) -> None:
    header, _, signature = sign(claims()).split(".")
    forged = f"{header}.{b64json(claims(sub='admin'))}.{signature}"
    error = await refusal(hs, forged)
    assert "signature" in str(error)
    assert_no_leak(error, forged)


async def test_a_tampered_signature_is_refused(hs: JWTAuthenticator) -> None:
    head, signature = sign(claims()).rsplit(".", 1)
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    error = await refusal(hs, f"{head}.{flipped}")
    assert "signature" in str(error)


async def test_a_token_signed_with_an_unknown_key_is_refused(hs: JWTAuthenticator) -> None:
    token = sign(claims(), OTHER)
    error = await refusal(hs, token)
    assert "matches no configured key" in str(error)
    assert_no_leak(error, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None])
async def test_alg_none_is_refused(hs: JWTAuthenticator, alg: str | None) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims())}."
    error = await refusal(hs, token)
    assert "algorithm is not accepted" in str(error)


async def test_none_cannot_be_configured() -> None:
    with pytest.raises(ConfigError, match="'none' is not supported"):
        JWTAuthenticator(secret=KEY_A, algorithms=["HS256", "none"])


async def test_an_hs256_token_keyed_with_the_rsa_public_pem_is_refused(
    rsa_keys: KeyPair,
) -> None:
    token = forge_hs256({"alg": "HS256", "typ": "JWT"}, claims(), rsa_keys.public)
    error = await refusal(JWTAuthenticator(public_key=rsa_keys.public), token)
    assert "algorithm is not accepted" in str(error)
    # even when HS256 is accepted too, the PEM never serves as an HMAC secret
    both = JWTAuthenticator(secret=KEY_A, public_key=rsa_keys.public,
                            algorithms=["HS256", "RS256"])
    error = await refusal(both, token)
    assert "matches no configured key" in str(error)
    assert_no_leak(error, token)


async def test_an_rs256_token_is_not_checked_against_hs_secrets(rsa_keys: KeyPair) -> None:
    token = sign(claims(), rsa_keys.private, "RS256")
    error = await refusal(JWTAuthenticator(secret=KEY_A), token)
    assert "algorithm is not accepted" in str(error)


async def test_a_signature_is_checked_only_by_keys_of_the_header_alg(
    rsa_keys: KeyPair, ec_keys: KeyPair
) -> None:
    auth = JWTAuthenticator(public_key=[rsa_keys.public, ec_keys.public])
    _, payload, signature = sign(claims(), ec_keys.private, "ES256").split(".")
    relabelled = f"{b64json({'alg': 'RS256', 'typ': 'JWT'})}.{payload}.{signature}"
    error = await refusal(auth, relabelled)
    assert "matches no configured key" in str(error)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"exp": 0}, "'sub'"),  # exp replaced below
        ({"sub": 42}, "must be a string"),
        ({"sub": ""}, "non-empty"),
        ({"sub": "x" * 257}, "over 256"),
    ],
)
async def test_unusable_subjects_are_refused(
    hs: JWTAuthenticator, payload: dict[str, Any], reason: str
) -> None:
    token = sign({**payload, "exp": now() + HOUR})
    error = await refusal(hs, token)
    assert reason in str(error)
    assert_no_leak(error, token)


@pytest.mark.parametrize(
    "token",
    ["", "a.b.c", "a.b", "...", "ünïcødé.ü.ü", "\x00\x00", "a" * 1_000_000,
     "eyJhbGciOiJIUzI1NiJ9." + "e" * 20_000, b64(b"[" * 5000 + b"]" * 5000) + ".e30.x",
     b64json({"alg": "HS256", "kid": ["x"]}) + ".e30.x", b64json(["HS256"]) + ".e30.x"],
    ids=["empty", "a.b.c", "two-parts", "dots", "non-ascii", "nul", "1MB", "long", "deep",
         "list-kid", "list-header"],
)
async def test_garbage_is_refused_without_a_traceback(hs: JWTAuthenticator, token: str) -> None:
    error = await refusal(hs, token)
    assert type(error) is AuthenticationError
    assert_no_leak(error, token)


async def test_an_oversized_token_is_refused_before_it_is_parsed(hs: JWTAuthenticator) -> None:
    token = sign(claims(padding="x" * 20_000))  # validly signed, but too big
    error = await refusal(hs, token)
    assert str(error) == "the token is over 16384 characters"


async def test_a_token_that_is_not_a_string_is_refused(hs: JWTAuthenticator) -> None:
    error = await refusal(hs, b"bytes.are.not-a-token")  # type: ignore[arg-type]
    assert "string" in str(error)


async def test_no_refusal_message_quotes_the_token(hs: JWTAuthenticator) -> None:
    tokens = [sign(claims(aud="x")), sign(claims(nbf=now() + HOUR)), sign(claims(sub=7)),
              sign(claims(), OTHER), sign({"sub": "alice"}), sign(claims(exp=now() - 5))]
    for token in tokens:
        with pytest.raises(AuthenticationError) as caught:
            await hs.authenticate(creds(token))
        assert_no_leak(caught.value, token)
        assert "alice" not in str(caught.value)


# ----------------------------------------------------------------------------- info


async def test_the_info_claim_becomes_the_identity_info() -> None:
    auth = JWTAuthenticator(secret=KEY_A, info_claim="profile")
    profile = {"name": "Alice", "roles": ["a", "b"]}
    assert (await auth.authenticate(creds(sign(claims(profile=profile))))).info == profile
    assert (await auth.authenticate(creds(sign(claims())))).info is None
    assert (await auth.authenticate(creds(sign(claims(profile=None))))).info is None


async def test_info_is_ignored_without_an_info_claim(hs: JWTAuthenticator) -> None:
    assert (await hs.authenticate(creds(sign(claims(profile={"a": 1}))))).info is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [(["a"], "claim 'profile' must be a JSON object"), ("text", "'profile' must be a JSON"),
     (7, "claim 'profile' must be a JSON object"),
     ({"blob": "x" * MAX_INFO_BYTES}, f"over {MAX_INFO_BYTES} bytes")],
)
async def test_unusable_info_is_refused(value: object, reason: str) -> None:
    auth = JWTAuthenticator(secret=KEY_A, info_claim="profile")
    token = sign(claims(profile=value))
    error = await refusal(auth, token)
    assert reason in str(error)
    assert_no_leak(error, token)


# ----------------------------------------------------------------------------- sources


async def test_a_plain_client_may_send_a_bearer_header(hs: JWTAuthenticator) -> None:
    token = sign(claims())
    socket = starlette_socket([(b"authorization", f"Bearer {token}".encode())])
    assert (await hs.authenticate(creds(None, socket))).user_id == "alice"
    lower = PlainSocket(headers={"Authorization": f"bearer  {token} "})
    assert (await hs.authenticate(creds(None, lower))).user_id == "alice"


async def test_the_header_can_be_turned_off() -> None:
    token = sign(claims())
    socket = starlette_socket([(b"authorization", f"Bearer {token}".encode())])
    error = await refusal(JWTAuthenticator(secret=KEY_A, header=False), None, socket)
    assert str(error) == "no token; send one in the connect frame"


async def test_a_cookie_is_read_only_when_named() -> None:
    token = sign(claims())
    socket = starlette_socket([(b"cookie", f"theme=dark; session={token}".encode())])
    auth = JWTAuthenticator(secret=KEY_A, cookie="session")
    assert (await auth.authenticate(creds(None, socket))).user_id == "alice"
    assert (await auth.authenticate(creds(None, PlainSocket(cookies={"session": token}))))
    error = await refusal(JWTAuthenticator(secret=KEY_A), None, socket)
    assert "no token" in str(error)


async def test_the_frame_token_wins_over_the_socket() -> None:
    socket = PlainSocket(headers={"authorization": f"Bearer {sign(claims(sub='header'))}"},
                         cookies={"s": sign(claims(sub="cookie"))})
    auth = JWTAuthenticator(secret=KEY_A, cookie="s")
    identity = await auth.authenticate(creds(sign(claims(sub="frame")), socket))
    assert identity.user_id == "frame"
    assert (await auth.authenticate(creds(None, socket))).user_id == "header"


async def test_a_non_bearer_header_falls_through_to_the_cookie() -> None:
    socket = PlainSocket(headers={"authorization": "Basic YWxhZGRpbjpvcGVu"},
                         cookies={"s": sign(claims(sub="cookie"))})
    auth = JWTAuthenticator(secret=KEY_A, cookie="s")
    assert (await auth.authenticate(creds(None, socket))).user_id == "cookie"


async def test_the_query_string_is_never_read(hs: JWTAuthenticator) -> None:
    token = sign(claims())
    socket = starlette_socket([], query=f"token={token}&access_token={token}".encode())
    error = await refusal(hs, None, socket)
    assert "no token" in str(error)
    assert_no_leak(error, token)


@pytest.mark.parametrize("websocket", [None, object(), "not a socket", PlainSocket()])
async def test_sockets_without_a_token_are_refused(websocket: object) -> None:
    auth = JWTAuthenticator(secret=KEY_A, cookie="session")
    error = await refusal(auth, None, websocket)
    assert str(error) == ("no token; send one in the connect frame or an Authorization: "
                          "Bearer header or the 'session' cookie")


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "needs a secret, a public_key or a jwks_url"),
        ({"secret": "short"}, "too short for HS256"),
        ({"secret": [KEY_A, "s" * 31]}, "too short for HS256"),  # RFC 7518: 32+ bytes
        ({"secret": [KEY_A, 42]}, "sequence of keys (strings)"),
        ({"secret": b"a-secret-in-bytes-of-32-bytes!!!"}, "sequence of keys (strings)"),
        ({"secret": []}, "non-empty sequence"),
        ({"public_key": [42]}, "sequence of keys (PEM text)"),
        ({"secret": KEY_A, "algorithms": ["HS512"]}, "too short for HS512"),
        ({"secret": KEY_A, "algorithms": []}, "non-empty sequence"),
        ({"secret": KEY_A, "algorithms": "HS256"}, "non-empty sequence"),
        ({"secret": KEY_A, "algorithms": ["RS256"]}, "RS256 has no key"),
        ({"public_key": "not a pem"}, "not an RSA, EC"),
        ({"secret": KEY_A, "leeway": -1}, "leeway"),
        ({"secret": KEY_A, "audience": []}, "audience"),
        ({"secret": KEY_A, "user_claim": ""}, "user_claim"),
        ({"secret": KEY_A, "require": "exp"}, "require"),
        ({"jwks_url": "file:///etc/passwd"}, "http(s) URL"),
        # signing keys over plain http: whoever is on the path could publish their own
        ({"jwks_url": "http://idp.example.com/jwks"}, "https"),
        ({"jwks_url": "http://10.0.0.8/jwks"}, "https"),
        ({"jwks_url": "http://127.0.0.1.evil.example/jwks"}, "https"),
        ({"secret": KEY_A, "leeway": float("nan")}, "leeway"),
        ({"jwks_url": "http://127.0.0.1/jwks", "jwks_lifespan": 0}, "jwks_lifespan"),
        ({"jwks_url": "http://127.0.0.1/jwks", "jwks_refetch_interval": -1}, "refetch"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        JWTAuthenticator(**options)
    assert reason in str(caught.value)


@pytest.mark.parametrize("url", ["https://idp.example.com/.well-known/jwks.json",
                                 "http://127.0.0.1:8080/jwks", "http://localhost/jwks",
                                 "http://[::1]:9000/jwks", "HTTPS://IDP.EXAMPLE.COM/jwks"])
def test_a_jwks_url_over_tls_or_to_this_machine_is_accepted(url: str) -> None:
    JWTAuthenticator(jwks_url=url)


def test_a_private_key_is_not_a_public_key(rsa_keys: KeyPair) -> None:
    with pytest.raises(ConfigError, match="private key"):
        JWTAuthenticator(public_key=rsa_keys.private)


def test_issue_needs_a_secret_and_an_info_claim_for_info(rsa_keys: KeyPair) -> None:
    with pytest.raises(ConfigError, match="needs a secret"):
        JWTAuthenticator(public_key=rsa_keys.public).issue("alice", ttl=60)
    with pytest.raises(ConfigError, match="info_claim"):
        JWTAuthenticator(secret=KEY_A).issue("alice", ttl=60, info={"a": 1})


def test_algorithms_default_to_the_keys_kinds(rsa_keys: KeyPair, ec_keys: KeyPair) -> None:
    auth = JWTAuthenticator(secret=KEY_A, public_key=[rsa_keys.public, ec_keys.public])
    assert auth._algorithms == ("HS256", "RS256", "ES256")


# ----------------------------------------------------------------------------- packaging


def test_a_missing_pyjwt_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "stabilizer.auth.jwt")
    monkeypatch.setitem(sys.modules, "jwt", None)  # what `import jwt` sees without PyJWT
    with pytest.raises(ImportError, match=r"pip install 'fastapi-stabilizer\[jwt\]'"):
        _ = stabilizer.auth.JWTAuthenticator
    with pytest.raises(AttributeError):
        _ = stabilizer.auth.NoSuchName


def test_importing_stabilizer_auth_does_not_import_pyjwt() -> None:
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, stabilizer.auth; "
            "print(sorted(m for m in sys.modules if m == 'jwt' or m.startswith('jwt.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, check=True, env={"PYTHONPATH": str(root)})
    assert result.stdout.strip() == "[]"


def test_the_declared_pyjwt_floor_excludes_the_release_that_took_a_substring_issuer() -> None:
    """PyJWT 2.10.0 accepted any token whose ``iss`` was a substring of a string issuer
    (CVE-2024-53861), and releases before it lack exceptions the authenticator imports."""
    import tomllib

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    [requirement] = [r for r in extras["jwt"] if r.lower().startswith("pyjwt")]
    floor = requirement.split(">=", 1)[1].split(",")[0].strip()
    assert tuple(int(part) for part in floor.split(".")) >= (2, 10, 1)
