"""Credentials on live v2 connections, over real sockets (uvicorn in the test's loop, raw
`websockets` clients): when the server asks for fresh ones, which refresh frames it checks,
where refreshed info shows, JWT leeway at the server, cookies sent from other sites, and
what a JWKS outage does (nothing final: the token could not be checked, not refused)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stabilizer import (
    Authenticator,
    AuthUnavailable,
    CloseCode,
    Credentials,
    Identity,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.auth import JWTAuthenticator
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served
from tests.support.jwks import Clock, JWKSServer, Key

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
V2 = "stabilizer.v2"
KEY = "a-first-secret-of-32-characters!"


class Issuer:
    """An authenticator whose tokens are the JSON of their claims; counts its checks."""

    def __init__(self) -> None:
        self.checks = 0

    def __call__(self, credentials: Credentials) -> Identity:
        self.checks += 1
        assert credentials.token is not None
        claims = json.loads(credentials.token)
        return Identity(claims["user"], claims.get("info"), claims.get("exp"))


def claims(exp: float | None, info: dict[str, Any] | None = None, user: str = "ann") -> str:
    return json.dumps({"user": user, "exp": exp, "info": info})


@asynccontextmanager
async def serving(monkeypatch: pytest.MonkeyPatch, authenticator: Authenticator | Any,
                  **settings: Any) -> AsyncIterator[tuple[str, WebSocketConnectionManager]]:
    manager = WebSocketConnectionManager(WebSocketConfig(**{**QUIET, **settings}),
                                         authenticator=authenticator)
    async with served(session_app(manager), "websockets-sansio", monkeypatch) as server:
        yield f"ws://127.0.0.1:{server.port}/ws", manager


async def next_frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame that is not a heartbeat ping."""
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame.get("type") != "ping":
                return frame


@asynccontextmanager
async def v2(url: str, token: str | None, **options: Any) -> AsyncIterator[
        tuple[ClientConnection, dict[str, Any]]]:
    """A v2 socket past its connect frame, and the session frame (or the refusal's close)."""
    async with websockets.connect(url, subprotocols=[V2], **options) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "token": token, "device": "d"}))
        try:
            first = await next_frame(ws)
        except ConnectionClosed as closed:
            first = close_of(closed)
        yield ws, first


def close_of(closed: ConnectionClosed) -> dict[str, Any]:
    """The close frame the server sent."""
    assert closed.rcvd is not None
    return {"closed": closed.rcvd.code, "reason": closed.rcvd.reason}


async def serve_until_closed(ws: ClientConnection, answer: Callable[[dict[str, Any]], str],
                             timeout: float = 10.0) -> tuple[int, list[tuple[float, str]]]:
    """Answer every `refresh` request with `answer(request)` until the server closes; the
    close code and the (monotonic time, type) of every frame before it."""
    frames: list[tuple[float, str]] = []
    try:
        while True:
            frame = await next_frame(ws, timeout)
            frames.append((time.monotonic(), frame["type"]))
            if frame["type"] == "refresh":
                await ws.send(json.dumps({"type": "refresh", "token": answer(frame)}))
    except ConnectionClosed as closed:
        return close_of(closed)["closed"], frames


# ----------------------------------------------------------------------------- requests


async def test_a_cached_token_is_asked_for_once_and_the_connection_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """get_token reusing a token until it expires answers with the credentials the request
    was about: the server used to ask again at once, until they expired (a refresh loop)."""
    grace = 0.3
    cached = claims(time.time() + 0.5)
    async with serving(monkeypatch, Issuer(), auth_refresh_grace=grace) as (url, _), \
            v2(url, cached) as (ws, welcome):
        assert welcome["type"] == "session"
        code, frames = await serve_until_closed(ws, lambda _: cached)
    assert code == CloseCode.AUTH_EXPIRED
    assert [kind for _, kind in frames] == ["refresh", "refreshed"]


async def test_tokens_shorter_than_the_grace_are_asked_for_once_per_half_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each fresh token still expires within the grace (as with a server clock ahead of the
    issuer's): the server used to ask again as soon as it had accepted one."""
    grace = 0.4
    async with serving(monkeypatch, Issuer(), auth_refresh_grace=grace) as (url, _), \
            v2(url, claims(time.time() + 0.2)) as (ws, welcome):
        assert welcome["type"] == "session"
        asked: list[float] = []
        while len(asked) < 4:
            frame = await next_frame(ws)
            if frame["type"] == "refresh":
                asked.append(time.monotonic())
                await ws.send(json.dumps({"type": "refresh",
                                          "token": claims(time.time() + 0.2)}))
    gaps = [later - earlier for earlier, later in itertools.pairwise(asked)]
    assert min(gaps) >= grace / 2 - 0.05, gaps  # (the client's clock: a little slack)


async def test_refresh_frames_nobody_asked_for_are_checked_once_per_half_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each refresh costs the authenticator a check (a signature, a JWKS look-up)."""
    issuer = Issuer()
    async with serving(monkeypatch, issuer, auth_refresh_grace=10.0) as (url, _), \
            v2(url, claims(time.time() + 3600)) as (ws, welcome):
        assert welcome["type"] == "session"
        for _ in range(5):
            await ws.send(json.dumps({"type": "refresh", "token": claims(time.time() + 7200)}))
        answers = [await next_frame(ws) for _ in range(5)]
    assert answers[0]["type"] == "refreshed"
    assert [(a["type"], a.get("code")) for a in answers[1:]] == [
        ("error", "refresh_too_soon")] * 4
    assert issuer.checks == 2  # the connect, the first refresh


async def test_an_identity_the_application_passed_is_not_asked_for_a_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """identity= and no authenticator: the server asked a v2 client for fresh credentials
    it could only refuse (refresh_unsupported), then closed it at expiry all the same."""
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, auth_refresh_grace=0.3))
    app = session_app(manager, Identity("ann", None, time.time() + 0.6))
    async with served(app, "websockets-sansio", monkeypatch) as server, \
            v2(f"ws://127.0.0.1:{server.port}/ws", None) as (ws, welcome):
        assert welcome.get("type") == "session", welcome
        code, frames = await serve_until_closed(ws, lambda _: claims(time.time() + 3600))
    assert code == CloseCode.AUTH_EXPIRED  # at expiry, after the grace, as a plain client
    assert [kind for _, kind in frames] == []


# ----------------------------------------------------------------------------- info


async def refreshed_info(url: str, manager: WebSocketConnectionManager) -> list[Any]:
    async with v2(url, claims(time.time() + 3600, {"role": "admin"})) as (ws, welcome):
        assert welcome["type"] == "session"
        listed = await manager.get_user_connections("ann")
        assert [p.info for p in listed] == [{"role": "admin"}]
        await ws.send(json.dumps({"type": "refresh",
                                  "token": claims(time.time() + 7200, {"role": "guest"})}))
        assert (await next_frame(ws))["type"] == "refreshed"
        return [p.info for p in await manager.get_user_connections("ann")]


async def test_refreshed_info_is_what_the_users_listing_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving(monkeypatch, Issuer()) as (url, manager):
        assert await refreshed_info(url, manager) == [{"role": "guest"}]


@pytest.mark.redis
async def test_refreshed_info_is_what_the_users_listing_shows_on_redis(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, namespace: str,
) -> None:
    async with serving(monkeypatch, Issuer(), redis_url=redis_url,
                       namespace=namespace) as (url, manager):
        assert await refreshed_info(url, manager) == [{"role": "guest"}]


# ----------------------------------------------------------------------------- JWT


def jwt_token(user: str = "ann", **claims: Any) -> str:
    return jwt.encode({"sub": user, **claims}, KEY, algorithm="HS256")


async def test_leeway_admits_a_token_that_expired_within_it_at_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The authenticator admitted it; the server refused it with 4003 all the same."""
    exp = int(time.time()) - 5
    auth = JWTAuthenticator(secret=KEY, leeway=60)
    async with serving(monkeypatch, auth) as (url, _), \
            v2(url, jwt_token(exp=exp)) as (_, welcome):
        assert welcome.get("type") == "session", welcome
        assert welcome["expires_at"] == exp + 60  # asked and closed on that basis


@pytest.mark.parametrize(("origin", "admitted"), [
    ("https://evil.example", False), (None, True), ("same", True)])
async def test_a_cookie_authenticates_only_a_handshake_from_its_own_origin(
    monkeypatch: pytest.MonkeyPatch, origin: str | None, admitted: bool,
) -> None:
    """Any site's page can open a WebSocket to the server, and the browser adds the
    victim's cookie: the attacker got the victim's session frame and reconnect token."""
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    async with serving(monkeypatch, auth) as (url, _):
        sent = url.replace("ws://", "http://").removesuffix("/ws") if origin == "same" \
            else origin
        headers = {"Cookie": f"sid={jwt_token('victim', exp=int(time.time()) + 600)}"}
        if sent is not None:
            headers["Origin"] = sent
        async with v2(url, None, additional_headers=headers) as (_, v2_first), \
                websockets.connect(url, additional_headers=headers) as plain:
            try:
                plain_first = await next_frame(plain)
            except ConnectionClosed as closed:
                plain_first = close_of(closed)
    for first in (v2_first, plain_first):
        if admitted:
            assert first["type"] == "session"
            assert first["client_id"].startswith("victim/")
        else:
            assert first["closed"] == CloseCode.AUTH_FAILED
            assert first["reason"].startswith("cross-site request refused")


# ----------------------------------------------------------------------------- JWKS outages

LIFESPAN = 300.0  # JWTAuthenticator's defaults: jwks_lifespan, jwks_refetch_interval
REFETCH = 10.0


@contextmanager
def jwks_of(key: Key) -> Iterator[tuple[JWKSServer, JWTAuthenticator, Clock]]:
    """A JWKS publishing `key`, and an authenticator reading it with a hand-moved clock."""
    jwks, clock = JWKSServer(), Clock()
    jwks.publish(key)
    try:
        yield jwks, JWTAuthenticator(jwks_url=jwks.url, clock=clock), clock
    finally:
        jwks.close()


async def test_a_connect_during_a_jwks_outage_is_told_to_come_back_and_then_admitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The identity provider blips: both bundled clients took 4505 as final and stayed
    away for good, over a token nobody had found wrong."""
    key = Key()
    with jwks_of(key) as (jwks, auth, clock):
        jwks.status = 503
        async with serving(monkeypatch, auth) as (url, _):
            async with v2(url, key.token("ann")) as (_, first):
                assert first.get("closed") == CloseCode.TRY_AGAIN_LATER, first
                assert set(json.loads(first["reason"])) == {"retry_ms"}
            jwks.status = 200
            clock.advance(REFETCH)  # the keys may be fetched again
            async with v2(url, key.token("ann")) as (_, second):
                assert second.get("type") == "session", second
                assert second["user_id"] == "ann"


async def test_a_refresh_during_a_jwks_outage_fails_and_the_connection_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = Key()
    with jwks_of(key) as (jwks, auth, clock):
        async with serving(monkeypatch, auth) as (url, _), \
                v2(url, key.token("ann")) as (ws, welcome):
            assert welcome.get("type") == "session", welcome
            jwks.status = 503
            clock.advance(2 * LIFESPAN)  # the keys are too old to use, and cannot be fetched
            await ws.send(json.dumps({"type": "refresh", "token": key.token("ann")}))
            answer = await next_frame(ws)
            await ws.send(json.dumps({"type": "ping"}))
            assert await next_frame(ws) == {"type": "pong"}  # still open
    assert (answer["type"], answer["code"]) == ("error", "refresh_failed")


class Outage(Issuer):
    """An Issuer whose first check of a refresh cannot be made (its key source is out of
    reach); every other check succeeds."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def __call__(self, credentials: Credentials) -> Identity:
        if credentials.refreshing and not self.failed:
            self.failed = True
            raise AuthUnavailable("the key source is out of reach")
        return super().__call__(credentials)


async def test_a_refresh_that_could_not_be_checked_is_asked_for_again_before_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client answers each request once; after refresh_failed the server never asked
    again, so a connection whose refresh met a short outage closed at expiry plus the grace
    (4003) although its client held fresh credentials all along."""
    grace = 1.0  # asked at 0.5 s, again at about 1.0 s; closed at 2.5 s unless refreshed
    async with serving(monkeypatch, Outage(), auth_refresh_grace=grace) as (url, _), \
            v2(url, claims(time.time() + 1.5)) as (ws, welcome):
        assert welcome["type"] == "session"
        kinds: list[str] = []
        while "refreshed" not in kinds:
            try:
                frame = await next_frame(ws)
            except ConnectionClosed as closed:
                kinds.append(f"closed {close_of(closed)['closed']}")
                break
            kinds.append(frame["type"])
            if frame["type"] == "refresh":
                await ws.send(json.dumps({"type": "refresh",
                                          "token": claims(time.time() + 3600)}))
    assert kinds == ["refresh", "error", "refresh", "refreshed"]


async def test_a_bad_token_with_the_jwks_in_reach_is_still_refused_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = Key()
    forged = Key().token("ann", kid=key.kid)  # the published kid, another key's signature
    with jwks_of(key) as (_, auth, clock):
        async with serving(monkeypatch, auth) as (url, _):
            for token in (forged, Key().token("ann")):  # the second: an unpublished kid
                async with v2(url, token) as (_, refused):
                    assert refused.get("closed") == CloseCode.AUTH_FAILED, refused
                clock.advance(REFETCH)  # (the unknown kid is refetched: the JWKS answers)
            async with v2(url, key.token("ann")) as (ws, welcome):
                assert welcome.get("type") == "session", welcome
                await ws.send(json.dumps({"type": "refresh", "token": forged}))
                with pytest.raises(ConnectionClosed) as closed:
                    await next_frame(ws)
    assert close_of(closed.value)["closed"] == CloseCode.AUTH_FAILED
