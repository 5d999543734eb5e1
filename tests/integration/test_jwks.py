"""JWTAuthenticator against a real JWKS endpoint on loopback: caching, rotation, outages and
floods of unknown key ids, counted on the server; the cache's clock is driven by hand.

A token is refused (AuthenticationError: 4505) only when the keys are in hand; when they
cannot be fetched it cannot be checked (AuthUnavailable, a BackendUnavailable: 1013)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from stabilizer.auth import Credentials, JWTAuthenticator
from stabilizer.errors import AuthenticationError, AuthUnavailable, BackendUnavailable
from tests.support.jwks import Clock, JWKSServer, Key

LIFESPAN = 300.0
REFETCH = 10.0
SECRET = "a-shared-secret-of-32-characters"


@pytest.fixture(scope="module")
def key_1() -> Key:
    return Key()


@pytest.fixture(scope="module")
def key_2() -> Key:
    return Key()


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    jwks = JWKSServer()
    yield jwks
    jwks.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def authenticator(url: str, clock: Clock, **options: Any) -> JWTAuthenticator:
    return JWTAuthenticator(jwks_url=url, jwks_lifespan=LIFESPAN, jwks_refetch_interval=REFETCH,
                            clock=clock, **options)


async def user_of(auth: JWTAuthenticator, token: str) -> str:
    async with asyncio.timeout(10):  # a bound, not a wait
        return (await auth.authenticate(Credentials(token, None))).user_id


async def refused(auth: JWTAuthenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await user_of(auth, token)
    assert caught.value.__traceback__ is not None
    assert not isinstance(caught.value, BackendUnavailable)
    assert token not in str(caught.value)
    return str(caught.value)


async def fetched_then_down(server: JWKSServer, clock: Clock, key: Key) -> JWTAuthenticator:
    """An authenticator that fetched the JWKS publishing `key` (and verified a token of it);
    the JWKS then answers 503."""
    server.publish(key)
    auth = authenticator(server.url, clock)
    assert await user_of(auth, key.token()) == "alice"
    server.status = 503
    return auth


async def unchecked(auth: JWTAuthenticator, token: str) -> str:
    """The outage that kept `token` from being checked (neither accepted nor refused)."""
    with pytest.raises(AuthUnavailable) as caught:
        await user_of(auth, token)
    assert not isinstance(caught.value, AuthenticationError)
    assert token not in str(caught.value)
    return str(caught.value)


async def test_published_keys_verify_and_are_cached(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    server.publish(key_1)
    auth = authenticator(server.url, clock)
    for name in ("alice", "bob", "carol"):
        assert await user_of(auth, key_1.token(name)) == name
    clock.advance(LIFESPAN - 1)
    assert await user_of(auth, key_1.token()) == "alice"
    assert server.requests == 1


async def test_concurrent_first_tokens_share_one_fetch(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    server.publish(key_1)
    auth = authenticator(server.url, clock)
    names = [f"user-{n}" for n in range(20)]
    async with asyncio.timeout(20):
        users = await asyncio.gather(*(user_of(auth, key_1.token(name)) for name in names))
    assert users == names
    assert server.requests == 1


async def test_an_ec_key_from_the_jwks_verifies(server: JWKSServer, clock: Clock) -> None:
    key = Key("ES256")
    server.publish(key)
    assert await user_of(authenticator(server.url, clock), key.token("eve")) == "eve"


async def test_a_rotated_in_key_is_accepted_after_exactly_one_refetch(
    server: JWKSServer, clock: Clock, key_1: Key, key_2: Key
) -> None:
    server.publish(key_1)
    auth = authenticator(server.url, clock)
    assert await user_of(auth, key_1.token()) == "alice"
    server.publish(key_1, key_2)
    # the first fetch was just now: an unknown kid may not refetch yet
    assert "does not publish" in await refused(auth, key_2.token())
    assert server.requests == 1
    clock.advance(REFETCH)
    assert await user_of(auth, key_2.token("bob")) == "bob"
    assert server.requests == 2
    for token in (key_2.token(), key_1.token(), key_2.token()):
        await user_of(auth, token)
    assert server.requests == 2


async def test_a_removed_key_stops_verifying_after_the_lifespan(
    server: JWKSServer, clock: Clock, key_1: Key, key_2: Key
) -> None:
    server.publish(key_1, key_2)
    auth = authenticator(server.url, clock)
    assert await user_of(auth, key_1.token()) == "alice"
    server.publish(key_2)
    clock.advance(LIFESPAN - 1)
    assert await user_of(auth, key_1.token()) == "alice"  # still cached
    assert server.requests == 1
    clock.advance(1)
    assert "does not publish" in await refused(auth, key_1.token())
    assert server.requests == 2
    assert await user_of(auth, key_2.token("bob")) == "bob"
    assert server.requests == 2


async def test_a_server_that_is_down_is_an_outage_not_a_refusal(
    clock: Clock, key_1: Key, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/jwks.json"
    auth = authenticator(url, clock)
    with caplog.at_level(logging.WARNING, logger="stabilizer.auth.keys"):
        message = await unchecked(auth, key_1.token())
    assert message == "cannot fetch the signing keys (JWKS); try again shortly"
    [record] = [r for r in caplog.records if r.name == "stabilizer.auth.keys"]
    assert record.levelno == logging.WARNING
    assert "JWKS fetch from" in record.getMessage()
    assert record.exc_info is None
    assert "Traceback" not in caplog.text


async def test_pem_keys_still_verify_while_the_jwks_is_unreachable(
    clock: Clock, key_1: Key
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/jwks.json"
    public_pem = key_1.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    auth = authenticator(url, clock, public_key=public_pem)
    assert await user_of(auth, key_1.token("pem-user")) == "pem-user"
    # a key the PEM keys are not: perhaps one the JWKS publishes, which cannot be read now
    assert "cannot fetch" in await unchecked(auth, Key().token())
    kidless = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, Key().private,
                         algorithm="RS256")
    assert "matches no configured key" in await refused(auth, kidless)  # no JWKS key's


async def test_a_failing_server_is_asked_at_most_once_per_interval(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    server.status = 500
    auth = authenticator(server.url, clock)
    for _ in range(20):
        await unchecked(auth, key_1.token())
    assert server.requests == 1
    clock.advance(REFETCH)
    server.status = 200
    server.publish(key_1)
    assert await user_of(auth, key_1.token()) == "alice"
    assert server.requests == 2


async def test_known_keys_outlive_a_short_outage_but_not_a_long_one(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    auth = await fetched_then_down(server, clock, key_1)
    clock.advance(LIFESPAN)
    assert await user_of(auth, key_1.token()) == "alice"  # the refresh failed: keep the keys
    assert server.requests == 2
    clock.advance(LIFESPAN)
    assert "cannot fetch" in await unchecked(auth, key_1.token())
    assert server.requests == 3


async def test_a_kid_the_stale_keys_lack_is_unchecked_while_they_cannot_be_refetched(
    server: JWKSServer, clock: Clock, key_1: Key, key_2: Key
) -> None:
    """The JWKS may publish the kid by now: only its answer can say the token is forged."""
    server.publish(key_1)
    auth = authenticator(server.url, clock)
    assert await user_of(auth, key_1.token()) == "alice"
    server.publish(key_1, key_2)
    server.status = 503
    clock.advance(LIFESPAN)  # stale: refetched for any kid, and the refetch fails
    assert "cannot fetch" in await unchecked(auth, key_2.token())
    assert await user_of(auth, key_1.token()) == "alice"  # the kept keys still verify
    assert server.requests == 2
    server.status = 200
    clock.advance(REFETCH)
    assert await user_of(auth, key_2.token("bob")) == "bob"
    assert server.requests == 3


async def test_an_unknown_kid_is_unchecked_after_a_failed_refetch_until_one_succeeds(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    auth = await fetched_then_down(server, clock, key_1)
    clock.advance(REFETCH)  # fresh keys; the unknown kid's refetch fails
    assert "cannot fetch" in await unchecked(auth, Key().token())
    assert "cannot fetch" in await unchecked(auth, Key().token())  # not asked again yet
    assert server.requests == 2
    server.status = 200
    clock.advance(REFETCH)
    assert "does not publish" in await refused(auth, Key().token())  # its answer is in hand
    assert server.requests == 3


async def test_a_flood_of_unknown_kids_fetches_a_bounded_number_of_times(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    server.publish(key_1)
    auth = authenticator(server.url, clock)
    intruder = Key()

    async def flood() -> list[BaseException | str]:
        tokens = [intruder.token(kid=uuid.uuid4().hex) for _ in range(100)]
        async with asyncio.timeout(20):
            return await asyncio.gather(*(user_of(auth, t) for t in tokens),
                                        return_exceptions=True)

    results = await flood()  # from a cold cache: one fetch for them all
    assert all(isinstance(result, AuthenticationError) for result in results)
    assert server.requests == 1
    clock.advance(REFETCH)
    results = await flood()
    assert all(isinstance(result, AuthenticationError) for result in results)
    assert server.requests == 2
    assert await user_of(auth, key_1.token()) == "alice"
    assert server.requests == 2


async def test_symmetric_keys_in_the_jwks_are_never_used(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    raw = b"published-oct-secret-of-32-bytes"
    oct_jwk = {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(raw).decode()}
    server.publish(key_1)
    server.keys.append(oct_jwk)
    auth = authenticator(server.url, clock, secret=SECRET, algorithms=["HS256", "RS256"])
    forged = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, raw,
                        algorithm="HS256", headers={"kid": "hmac"})
    assert "matches no configured key" in await refused(auth, forged)
    # and an RS256 token naming the oct key's kid finds no RSA key either
    assert "does not publish" in await refused(auth, key_1.token(kid="hmac"))


async def test_a_token_without_a_kid_is_refused(
    server: JWKSServer, clock: Clock, key_1: Key
) -> None:
    server.publish(key_1)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, key_1.private,
                       algorithm="RS256")
    assert "kid" in await refused(authenticator(server.url, clock), token)
    assert server.requests == 0


async def test_a_server_that_never_answers_is_bounded_by_the_timeout(
    clock: Clock, key_1: Key
) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        auth = authenticator(url, clock, jwks_timeout=0.2)
        assert "cannot fetch" in await unchecked(auth, key_1.token())
