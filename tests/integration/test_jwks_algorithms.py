"""Which algorithms a JWKS key verifies: the one its JWK names, or, when it names none (the
"alg" member is optional, RFC 7517 4.4), any configured algorithm of its key type; an EC
key's curve still fixes its algorithm, and a symmetric algorithm never meets a public key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm

from stabilizer.auth import Credentials, JWTAuthenticator
from stabilizer.errors import AuthenticationError
from tests.support.jwks import Clock, JWKSServer, Key

SECRET = "a-shared-secret-of-32-characters"


@pytest.fixture(scope="module")
def unnamed_rsa() -> Key:
    return Key("RS256", named=False)


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    jwks = JWKSServer()
    yield jwks
    jwks.close()


def authenticator(server: JWKSServer, *algorithms: str, **options: Any) -> JWTAuthenticator:
    return JWTAuthenticator(jwks_url=server.url, algorithms=list(algorithms), clock=Clock(),
                            **options)


async def user_of(auth: JWTAuthenticator, token: str) -> str:
    async with asyncio.timeout(10):  # a bound, not a wait
        return (await auth.authenticate(Credentials(token, None))).user_id


async def refused(auth: JWTAuthenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await user_of(auth, token)
    return str(caught.value)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
async def test_a_key_naming_no_algorithm_verifies_each_configured_rsa_algorithm(
    server: JWKSServer, unnamed_rsa: Key, alg: str
) -> None:
    server.publish(unnamed_rsa)
    auth = authenticator(server, alg)
    assert await user_of(auth, unnamed_rsa.token("ann", alg=alg)) == "ann"


async def test_one_unnamed_key_serves_several_algorithms_at_once(
    server: JWKSServer, unnamed_rsa: Key
) -> None:
    server.publish(unnamed_rsa)
    auth = authenticator(server, "RS256", "PS256", "RS512")
    for alg in ("PS256", "RS512", "RS256", "PS256"):
        assert await user_of(auth, unnamed_rsa.token(alg, alg=alg)) == alg
    assert "not accepted" in await refused(auth, unnamed_rsa.token(alg="PS384"))


async def test_a_key_naming_its_algorithm_verifies_only_that_one(server: JWKSServer) -> None:
    named = Key("RS256")
    server.publish(named)
    auth = authenticator(server, "RS256", "PS256")
    assert await user_of(auth, named.token("ann")) == "ann"
    assert "does not match its key" in await refused(auth, named.token(alg="PS256"))


async def test_an_hs_token_never_verifies_against_an_unnamed_rsa_key(
    server: JWKSServer, unnamed_rsa: Key
) -> None:
    server.publish(unnamed_rsa)
    auth = authenticator(server, "HS256", "PS256", secret=SECRET)
    claims = {"sub": "mallory", "exp": int(time.time()) + 60}
    public = unnamed_rsa.private.public_key()
    for encoding, form in ((serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo),
                           (serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo),
                           (serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)):
        published = public.public_bytes(encoding, form)  # what an attacker can read
        forged = hs256({"alg": "HS256", "typ": "JWT", "kid": unnamed_rsa.kid}, claims, published)
        assert "matches no configured key" in await refused(auth, forged)
    assert await user_of(auth, unnamed_rsa.token("ann", alg="PS256")) == "ann"


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with `secret`, built by hand: PyJWT refuses a public key as one."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(mac)}"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "EdDSA"])
async def test_unnamed_ec_and_okp_keys_verify_the_algorithm_of_their_curve(
    server: JWKSServer, alg: str
) -> None:
    key = Key(alg, named=False)
    server.publish(key)
    auth = authenticator(server, "ES256", "ES384", "ES512", "EdDSA")
    assert await user_of(auth, key.token("ann")) == "ann"


async def test_an_unnamed_ec_key_refuses_a_token_of_another_curves_algorithm(
    server: JWKSServer,
) -> None:
    key = Key("ES384", named=False)
    server.publish(key)
    auth = authenticator(server, "ES256", "ES384")
    # An ES256 header over a P-384 signature: PyJWT's own ES256 refuses to sign that.
    lax = jwt.PyJWS()
    lax.unregister_algorithm("ES256")
    lax.register_algorithm("ES256", ECAlgorithm(ECAlgorithm.SHA256))
    payload = json.dumps({"sub": "mallory", "exp": int(time.time()) + 60}).encode()
    mislabelled = lax.encode(payload, key.private, algorithm="ES256", headers={"kid": key.kid})
    assert "does not match its key" in await refused(auth, mislabelled)
    assert await user_of(auth, key.token("ann")) == "ann"


@pytest.mark.parametrize("odd_alg", ["none", "XX512"])
async def test_a_member_pyjwt_cannot_read_is_skipped_and_the_others_still_verify(
    server: JWKSServer, odd_alg: str
) -> None:
    """One member naming an algorithm PyJWT has no implementation of (PyJWK raises
    NotImplementedError for "none") is skipped as an unreadable key is, not taken for a
    broken key set that refuses every token."""
    good, odd = Key("RS256"), Key("RS256")
    odd.jwk = dict(odd.jwk, alg=odd_alg)
    server.publish(good, odd)
    assert await user_of(authenticator(server, "RS256"), good.token("alice")) == "alice"
