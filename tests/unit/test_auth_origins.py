"""Cross-site WebSocket hijacking: a cookie is an ambient credential, which a browser sends
with a handshake that a page of any site starts. JWTAuthenticator(cookie=...) takes a cookie
only from pages of the socket's own origin (its scheme, host and port), or of the origins it
lists."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from starlette.websockets import WebSocket
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from stabilizer.auth import Credentials, JWTAuthenticator, origin_allowed
from stabilizer.errors import AuthenticationError, ConfigError

KEY = "a-first-secret-of-32-characters!"


def token(user: str = "victim") -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, KEY, algorithm="HS256")


def handshake(origin: str | None, host: str | None = "app.example", *,
              cookie: str | None = None, bearer: str | None = None,
              scheme: str | None = "wss") -> WebSocket:
    """A Starlette WebSocket as a browser's handshake makes it (no I/O), served as `scheme`
    (the ASGI scope's; None: the scope names none)."""
    return WebSocket(scope_of(origin, host, cookie=cookie, bearer=bearer, scheme=scheme),
                     never, never)


def scope_of(origin: str | None, host: str | None = "app.example", *,
             cookie: str | None = None, bearer: str | None = None,
             scheme: str | None = "wss", **more: str) -> dict[str, Any]:
    """The ASGI scope of such a handshake; `more` are further headers."""
    headers = [(name.encode(), value.encode()) for name, value in (
        ("host", host), ("origin", origin), ("cookie", f"sid={cookie}" if cookie else None),
        ("authorization", f"Bearer {bearer}" if bearer else None), *more.items())
        if value is not None]
    scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": headers}
    if scheme is not None:
        scope["scheme"] = scheme
    return scope


async def never(*_: object) -> Any:
    raise AssertionError("the authenticator must not touch the socket's I/O")


async def user_of(auth: JWTAuthenticator, websocket: WebSocket, frame: str | None = None
                  ) -> str:
    return (await auth.authenticate(Credentials(frame, websocket))).user_id


@pytest.mark.parametrize(("host", "origin"), [
    ("app.example", "https://evil.example"),
    ("app.example", "https://app.example.evil.example"),
    ("app.example", "https://sub.app.example"),
    ("app.example:8000", "http://app.example:9000"),
    ("app.example", "null"),  # a sandboxed frame, a file: page
    (None, "https://app.example"),  # nothing to compare with
])
async def test_a_cookie_sent_from_another_origin_is_refused(host: str | None,
                                                            origin: str) -> None:
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    with pytest.raises(AuthenticationError) as refused:
        await user_of(auth, handshake(origin, host, cookie=token()))
    assert str(refused.value).startswith("cross-site request refused: origin ")
    assert "origins=" in str(refused.value)


@pytest.mark.parametrize(("scheme", "host", "origin"), [
    ("wss", "app.example", "https://app.example"),
    ("ws", "app.example:8000", "http://app.example:8000"),
    ("wss", "APP.example", "https://app.EXAMPLE"),
    ("wss", "app.example:443", "https://app.example"),
    ("ws", "[::1]:8000", "http://[::1]:8000"),
    ("ws", "app.example", "http://app.example"),
    (None, "app.example", "http://app.example"),  # no scheme in the scope: ws, ASGI's default
])
async def test_a_cookie_sent_from_the_sockets_own_origin_is_accepted(
        scheme: str | None, host: str, origin: str) -> None:
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    websocket = handshake(origin, host, cookie=token(), scheme=scheme)
    assert await user_of(auth, websocket) == "victim"
    assert origin_allowed(websocket)


@pytest.mark.parametrize(("scheme", "host", "origin"), [
    ("wss", "app.example", "http://app.example"),  # an http page, a wss socket
    ("wss", "app.example:8443", "http://app.example:8443"),
    ("ws", "app.example", "https://app.example"),  # an https page, a ws socket
    ("ws", "app.example:8000", "https://app.example:8000"),
    (None, "app.example", "https://app.example"),
])
async def test_a_cookie_sent_from_a_page_of_another_scheme_is_refused(
        scheme: str | None, host: str, origin: str) -> None:
    """The port of a Host without one was taken from the Origin's scheme: a page of
    http://app.example (which anyone on its network path may write) used the cookie of the
    socket at wss://app.example."""
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    websocket = handshake(origin, host, cookie=token(), scheme=scheme)
    assert not origin_allowed(websocket)
    with pytest.raises(AuthenticationError, match=r"^cross-site request refused"):
        await user_of(auth, websocket)


async def behind_proxy(client: str, *, forwarded_proto: str = "https") -> WebSocket:
    """The WebSocket an app gets behind uvicorn's proxy-headers middleware (trusting
    127.0.0.1, its default) for an https page's handshake a TLS-terminating proxy at
    `client` passed on as ws."""
    seen: list[WebSocket] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(WebSocket(scope, never, never))

    scope = scope_of("https://app.example", cookie=token(), scheme="ws",
                     **{"x-forwarded-proto": forwarded_proto})
    scope["client"] = (client, 50000)
    await ProxyHeadersMiddleware(app)(scope, never, never)
    return seen[0]


async def test_behind_a_tls_proxy_the_trusted_forwarded_scheme_or_origins_admit_its_pages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    assert await user_of(auth, await behind_proxy("127.0.0.1")) == "victim"  # X-Forwarded-Proto
    untrusted = await behind_proxy("10.0.0.7")  # the server does not trust this proxy
    with caplog.at_level(logging.WARNING, logger="stabilizer.auth.jwt"):
        for _ in range(3):
            with pytest.raises(AuthenticationError, match=r"^cross-site request refused"):
                await user_of(auth, untrusted)
    [hint] = [r.getMessage() for r in caplog.records if r.name == "stabilizer.auth.jwt"]
    assert "X-Forwarded-Proto" in hint  # once per authenticator
    assert "origins=" in hint
    listed = JWTAuthenticator(secret=KEY, cookie="sid", origins=["https://app.example"])
    assert await user_of(listed, untrusted) == "victim"
    with pytest.raises(AuthenticationError, match=r"^cross-site request refused"):
        await user_of(auth, await behind_proxy("127.0.0.1", forwarded_proto="http"))


async def test_listed_origins_replace_the_same_origin_rule() -> None:
    auth = JWTAuthenticator(secret=KEY, cookie="sid",
                            origins=["https://app.example", "http://localhost:3000"])
    api = "api.example"  # the socket is served from another host than the pages
    assert await user_of(auth, handshake("https://app.example", api, cookie=token()))
    assert await user_of(auth, handshake("http://localhost:3000", api, cookie=token()))
    for origin in ("https://api.example", "http://app.example", "https://evil.example"):
        with pytest.raises(AuthenticationError, match="cross-site"):
            await user_of(auth, handshake(origin, api, cookie=token()))
    anywhere = JWTAuthenticator(secret=KEY, cookie="sid", origins=["*"])
    assert await user_of(anywhere, handshake("https://evil.example", api, cookie=token()))


async def test_a_client_that_sends_no_origin_is_no_browser_and_keeps_its_cookie() -> None:
    """Browsers always send Origin with a WebSocket handshake; other clients choose their
    cookies themselves, so nobody rides on theirs."""
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    assert await user_of(auth, handshake(None, cookie=token())) == "victim"


async def test_credentials_a_page_must_hold_itself_need_no_origin_check() -> None:
    """A token in the connect frame or in an Authorization header is not ambient: a page
    of another site cannot present the victim's."""
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    evil = "https://evil.example"
    assert await user_of(auth, handshake(evil, cookie=token()), token("framed")) == "framed"
    assert await user_of(auth, handshake(evil, bearer=token("bearer"))) == "bearer"


@pytest.mark.parametrize(("options", "reason"), [
    ({"origins": ["https://app.example"]}, "origins apply to the cookie"),
    ({"cookie": "sid", "origins": "https://app.example"}, "sequence"),
    ({"cookie": "sid", "origins": []}, "sequence"),
    ({"cookie": "sid", "origins": ["app.example"]}, "scheme://host"),
    ({"cookie": "sid", "origins": ["https://app.example/"]}, "scheme://host"),
    ({"cookie": "sid", "origins": ["https://app.example:99999"]}, "scheme://host"),
    ({"cookie": "sid", "origins": [None]}, "scheme://host"),
])
def test_origins_are_checked_when_configured(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        JWTAuthenticator(secret=KEY, **options)


def test_function_authenticators_check_the_origin_with_the_same_rule() -> None:
    assert origin_allowed(handshake("https://app.example"))
    assert origin_allowed(handshake(None))
    assert not origin_allowed(handshake("https://evil.example"))
    assert origin_allowed(handshake("https://evil.example"), ["https://evil.example"])
    assert not origin_allowed(handshake("https://app.example"), ["https://evil.example"])
