"""Which pages may use an ambient credential (a cookie) to open a WebSocket: the defence
against cross-site WebSocket hijacking.

A browser sends its cookies with a WebSocket handshake that a page of any site starts, and
WebSockets have no CORS: only the ``Origin`` header the browser sets tells the server which
page asks. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from stabilizer.errors import ConfigError

#: An ``origins`` entry that admits every origin (no protection: for SameSite=Strict cookies).
ANY_ORIGIN: Final = "*"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
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
    own origin (the ``Host`` header's host and port)."""
    headers = getattr(websocket, "headers", None)
    getter = getattr(headers, "get", None)
    if not callable(getter):
        return True  # no headers to carry an Origin: not a browser's handshake
    origin = getter("origin") or getter("Origin")
    if origin is None:
        return True
    if not isinstance(origin, str):
        return False
    if origins is not None:
        parsed = _parse(origin)
        return ANY_ORIGIN in origins or (
            parsed is not None and any(_parse(allowed) == parsed for allowed in origins))
    return _same_origin(origin, getter("host") or getter("Host"))


def _same_origin(origin: str, host: object) -> bool:
    parsed = _parse(origin)
    if parsed is None or not isinstance(host, str) or not host:
        return False
    scheme, name, port = parsed
    try:
        served = urlsplit(f"//{host.strip()}")
        served_port = served.port if served.port is not None else _DEFAULT_PORTS[scheme]
    except ValueError:
        return False
    return served.hostname == name and served_port == port


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
