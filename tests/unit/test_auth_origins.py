"""Cross-site WebSocket hijacking: a cookie is an ambient credential, which a browser sends
with a handshake that a page of any site starts. JWTAuthenticator(cookie=...) takes a cookie
only from pages of the socket's own origin, or of the origins it lists."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from starlette.websockets import WebSocket

from stabilizer.auth import Credentials, JWTAuthenticator, origin_allowed
from stabilizer.errors import AuthenticationError, ConfigError

KEY = "a-first-secret-of-32-characters!"


def token(user: str = "victim") -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, KEY, algorithm="HS256")


def handshake(origin: str | None, host: str | None = "app.example", *,
              cookie: str | None = None, bearer: str | None = None) -> WebSocket:
    """A Starlette WebSocket as a browser's handshake makes it (no I/O)."""
    headers = [(name.encode(), value.encode()) for name, value in (
        ("host", host), ("origin", origin), ("cookie", f"sid={cookie}" if cookie else None),
        ("authorization", f"Bearer {bearer}" if bearer else None)) if value is not None]

    async def never(*_: object) -> Any:
        raise AssertionError("the authenticator must not touch the socket's I/O")

    return WebSocket({"type": "websocket", "path": "/ws", "headers": headers}, never, never)


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


@pytest.mark.parametrize(("host", "origin"), [
    ("app.example", "https://app.example"),
    ("app.example:8000", "http://app.example:8000"),
    ("APP.example", "https://app.EXAMPLE"),
    ("app.example:443", "https://app.example"),
    ("[::1]:8000", "http://[::1]:8000"),
])
async def test_a_cookie_sent_from_the_sockets_own_origin_is_accepted(host: str,
                                                                     origin: str) -> None:
    auth = JWTAuthenticator(secret=KEY, cookie="sid")
    assert await user_of(auth, handshake(origin, host, cookie=token())) == "victim"


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
