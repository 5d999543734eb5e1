"""Which pages may use an ambient credential (a cookie) to open a WebSocket: the defence
against cross-site WebSocket hijacking.

A browser sends its cookies with a WebSocket handshake that a page of any site starts, and
WebSockets have no CORS: only the ``Origin`` header the browser sets tells the server which
page asks. The socket's own origin is its scheme (the ASGI scope's: ``wss`` is an ``https``
page's, ``ws`` an ``http`` one's) with the ``Host`` header's host and port. Behind a proxy
that terminates TLS the scope says ``ws`` unless the ASGI server trusts the proxy's
``X-Forwarded-Proto`` (uvicorn: ``--forwarded-allow-ips``), so an ``https`` page is not the
socket's own: trust the header, or list the pages' origins. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

from stabilizer.errors import ConfigError

#: An ``origins`` entry that admits every origin (no protection: for SameSite=Strict cookies).
ANY_ORIGIN: Final = "*"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_PAGE_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_Origin = tuple[str, str, int]  # scheme, host, port


def check_origins(origins: Sequence[str] | None) -> tuple[str, ...] | None:
    """The allowed origins, each ``scheme://host[:port]`` (or ``*``), lower-cased.

    Raises:
        ConfigError: not a non-empty sequence of such strings.
    """
    if origins is None:
        return None
    if isinstance(origins, str) or not isinstance(origins, Sequence) or not origins:
        raise ConfigError("origins must be a non-empty sequence such as "
                          "['https://app.example'] (or ['*'] to admit every site)")
    for origin in origins:
        if origin != ANY_ORIGIN and (not isinstance(origin, str) or _parse(origin) is None):
            raise ConfigError(f"origin {origin!r} is not scheme://host[:port] "
                              "(no path, no trailing slash), e.g. 'https://app.example'")
    return tuple(origin.lower() for origin in origins)


def origin_allowed(websocket: object, origins: Sequence[str] | None = None) -> bool:
    """True when the page that opened `websocket` may use its cookies: the handshake has no
    ``Origin`` (no browser sent it), or one of `origins`, or by default (None) the socket's
    own origin (its scheme, and the ``Host`` header's host and port)."""
    getter = _headers(websocket)
    if getter is None:
        return True  # no headers to carry an Origin: not a browser's handshake
    origin = getter("origin") or getter("Origin")
    if origin is None:
        return True
    if not isinstance(origin, str):
        return False
    parsed = _parse(origin)
    if origins is not None:
        return ANY_ORIGIN in origins or (
            parsed is not None and any(_parse(allowed) == parsed for allowed in origins))
    served = _served(getter("host") or getter("Host"), _scope_scheme(websocket))
    return parsed is not None and served is not None and _as_page(parsed) == served


def behind_tls_proxy(websocket: object) -> bool:
    """True when an ``https`` page opened a ``ws`` socket of its own host and port: what a
    proxy that terminates TLS looks like when the ASGI server does not trust its
    ``X-Forwarded-Proto`` (origin_allowed refuses it by default)."""
    getter = _headers(websocket)
    origin = None if getter is None else getter("origin") or getter("Origin")
    if getter is None or not isinstance(origin, str) or _scope_scheme(websocket) != "http":
        return False
    parsed = _parse(origin)
    return parsed is not None and parsed == _served(getter("host") or getter("Host"), "https")


def _headers(websocket: object) -> Callable[[str], object] | None:
    getter = getattr(getattr(websocket, "headers", None), "get", None)
    return getter if callable(getter) else None


def _scope_scheme(websocket: object) -> str | None:
    """The page scheme (http or https) of the socket's ASGI scope scheme (``ws``, the ASGI
    default, when it names none); None for a scheme of no web page."""
    scope = getattr(websocket, "scope", None)
    scheme = scope.get("scheme", "ws") if isinstance(scope, Mapping) else "ws"
    return _PAGE_SCHEMES.get(scheme) if isinstance(scheme, str) else None


def _served(host: object, scheme: str | None) -> _Origin | None:
    """The origin of a socket served as `scheme` at `host` (a Host header: the scheme's
    default port when it names none); None without a usable Host or scheme."""
    if scheme is None or not isinstance(host, str) or not host:
        return None
    try:
        served = urlsplit(f"//{host.strip().lower()}")
        port = served.port if served.port is not None else _DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return (scheme, served.hostname, port) if served.hostname else None


def _as_page(origin: _Origin) -> _Origin:
    """`origin` with a ``ws``/``wss`` scheme named as a page's (no browser sends those)."""
    return _PAGE_SCHEMES[origin[0]], origin[1], origin[2]


def _parse(origin: str) -> _Origin | None:
    """An origin's (scheme, host, port), the port made explicit; None for anything that is
    not a serialized origin (``null`` included)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if (parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password):
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[
        parts.scheme]
