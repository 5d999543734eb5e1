"""The client's pure half: close-code decisions, URLs, frames, positions (retry timing is
in client_retry.py, protocol v2's own frames in client_v2.py).

No I/O here (``stabilizer.client`` does the networking); everything is tested with plain
calls in tests/unit/test_client_logic.py and tests/unit/test_client_v2.py.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final, TypeVar
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from stabilizer.config import CloseCode, should_reconnect
from stabilizer.errors import ConfigError, WebSocketStabilizerError, WireError
from stabilizer.pure.positions import MAX_POSITIONS, MAX_POSITIONS_TEXT
from stabilizer.pure.text import JSONValue

logger = logging.getLogger("stabilizer.client")

ControlFrame = dict[str, JSONValue]
T = TypeVar("T")

CONTROL_TYPES: Final = frozenset({"session", "ping", "pong", "resume", "error"})
RETRYABLE_HTTP: Final = frozenset({408, 429, 500, 502, 503, 504})
_OWN_PARAMS: Final = frozenset({"token", "positions"})
LOST: Final = 1006  # the code a dropped connection reports (no close frame)
#: The most positions a resume sends (a server refuses more with a final 1008): its
#: streams, and their JSON text (less a margin: a server counts the text its own way).
MAX_RESUME_STREAMS: Final = MAX_POSITIONS
MAX_RESUME_TEXT: Final = MAX_POSITIONS_TEXT - 1024
#: Protocol 1: the longest path and query (percent-encoded, in bytes) a URL may have with
#: ``positions`` in it. ASGI servers and proxies commonly read handshake lines of at most
#: 8 KiB (uvicorn's default WebSocket implementation never answers a longer one).
MAX_RESUME_URL: Final = 6 * 1024


class ClientError(WebSocketStabilizerError):
    """Base of the errors stabilizer.client raises."""


class ClientClosedError(ClientError):
    """The connection is closed for good: nothing more is sent or received."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ServerClosedError(ClientClosedError):
    """The server closed with a code that forbids reconnecting (1000, 1008, 1009, 4500+;
    4505 AUTH_FAILED: the credentials were refused)."""


class RetriesExhaustedError(ClientClosedError):
    """``RetryPolicy.max_attempts`` attempts in a row failed to open a connection."""


class HandshakeRejectedError(ClientClosedError):
    """The URL is unusable, the upgrade was refused for good (HTTP 403, 404...), the
    server's session belongs to another client id, or (``protocol=2``) the server does not
    speak protocol v2."""


class SendTimeoutError(ClientError, TimeoutError):
    """``send`` found no open connection, or could not finish, within its timeout."""


class ConnectionState(StrEnum):
    """Where the client is in its life: see the module docstring."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class CloseAction(Enum):
    """What a close code tells the client to do next."""

    RETRY = "retry"
    RETRY_WITHOUT_TOKEN = "retry_without_token"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state change, or one more scheduled attempt while (re)connecting."""

    state: ConnectionState
    failures: int = 0              # attempts in a row that failed or closed before stable_after
    delay: float = 0.0             # seconds until the next attempt
    close_code: int | None = None  # why the last socket ended (1006: no close frame)
    close_reason: str = ""
    url: str | None = None         # the URL just opened or just lost (never with a token)
    error: ClientClosedError | None = None  # what ended the client (CLOSED); None: aclose()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The server's ``session`` frame (``protocol``, ``device``, ``user_id``, ``expires_at``
    and ``max_message_size`` come with protocol v2; they are 1 and None from a plain server,
    and ``max_message_size`` None from a v2 server that does not state it)."""

    client_id: str
    conn_id: str
    node_id: str
    resumed: bool
    token: str | None
    heartbeat_interval: float | None
    history: bool
    protocol: int = 1
    device: str | None = None
    user_id: str | None = None
    expires_at: float | None = None  # Unix seconds: when the credentials expire
    max_message_size: int | None = None  # the most bytes of a frame the server reads

    @classmethod
    def from_frame(cls, frame: Mapping[str, JSONValue]) -> SessionInfo:
        """Read a session frame, tolerating missing fields."""
        token = frame.get("token")
        protocol = frame.get("protocol")
        return cls(
            client_id=str(frame.get("client_id", "")), conn_id=str(frame.get("conn_id", "")),
            node_id=str(frame.get("node_id", "")), resumed=frame.get("resumed") is True,
            token=token if isinstance(token, str) and token else None,
            heartbeat_interval=finite_number(frame.get("heartbeat_interval")),
            history=frame.get("history") is True,
            protocol=protocol if type(protocol) is int else 1,
            device=_text(frame.get("device")), user_id=_text(frame.get("user_id")),
            expires_at=finite_number(frame.get("expires_at")),
            max_message_size=_count(frame.get("max_message_size")),
        )


def finite_number(value: JSONValue) -> float | None:
    """A finite number a server sent, else None (an integer too large for a float too)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _count(value: JSONValue) -> int | None:
    """A positive integer a server sent, else None."""
    return value if type(value) is int and value > 0 else None


def _text(value: JSONValue) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class ResumeResult:
    """What a reconnect recovered; ``recovered`` false means: resync from your own source."""

    recovered: bool
    replayed: int = 0
    failed: tuple[str, ...] = ()   # streams the server could not replay
    session_resumed: bool = True   # false: a fresh session (token refused, or its session gone)


@dataclass(frozen=True, slots=True)
class Wrapped:
    """An application message as a history ``message`` frame carries it.

    ``offset`` and ``epoch`` are None when the server could not sequence the message (its
    backend was down): it is delivered but moves no position.
    """

    stream: str
    offset: int | None
    epoch: str | None
    payload: str | bytes


class Positions:
    """Per stream, the ``[offset, epoch]`` of the last message handed to the application."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, str]] = {}

    def seen(self, stream: str, offset: int, epoch: str) -> bool:
        """True for a duplicate: the same epoch, an offset not greater than the recorded."""
        last = self._last.get(stream)
        return last is not None and last[1] == epoch and offset <= last[0]

    def accept(self, stream: str, offset: int, epoch: str) -> bool:
        """Record a message; False for a duplicate (same epoch, offset not greater)."""
        if self.seen(stream, offset, epoch):
            return False
        last = self._last.get(stream)
        if last is not None and last[1] == epoch and offset > last[0] + 1:
            logger.warning("stream %r skipped offsets %d..%d", stream, last[0] + 1, offset - 1)
        self._last[stream] = (offset, epoch)
        return True

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """A copy of the recorded positions."""
        return dict(self._last)

    def forget(self, stream: str) -> None:
        """Stop recording `stream` (a channel left: the next subscription's replay starts
        where that membership begins, and resumes carry no stream the client left)."""
        self._last.pop(stream, None)

    def restore(self, stream: str, last: tuple[int, str] | None) -> None:
        """Record `last` for `stream` again (a leave that failed: the channel is still
        held) unless a position was recorded since."""
        if last is not None:
            self._last.setdefault(stream, last)

    def get(self, stream: str) -> tuple[int, str] | None:
        """The recorded position of `stream`, if any."""
        return self._last.get(stream)

    def to_resume(self) -> dict[str, tuple[int, str]]:
        """What a resume sends: every position, or none when they are over what a server
        takes (1,000 streams, 64 KiB as JSON), which it would refuse with a final 1008. The
        server then replays from where the session began, and the duplicates are dropped
        here (accept() still knows every position)."""
        return dict(self._last) if self.encode() is not None else {}

    def encode(self) -> str | None:
        """The ``positions`` query value (JSON), or None when there is nothing to send (none
        recorded, or more than a server takes: see to_resume)."""
        if not self._last or len(self._last) > MAX_RESUME_STREAMS:
            return None
        text = self._encoded(self._last)
        # (in UTF-8 bytes, as a frame's size is counted: a v2 resume's channels share the
        # budget; a server's own limit, in characters, is never over it)
        return text if len(text.encode()) <= MAX_RESUME_TEXT else None

    @staticmethod
    def _encoded(positions: Mapping[str, tuple[int, str]]) -> str:
        value = {stream: [offset, epoch] for stream, (offset, epoch) in positions.items()}
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def code_name(code: int) -> str:
    """A close code for messages: ``4500 (REPLACED)``, or the bare number."""
    try:
        return f"{code} ({CloseCode(code).name})"
    except ValueError:
        return str(code)


def close_action(code: int, *, used_token: bool) -> CloseAction:
    """Decide from a close code alone what to do next (protocol section 5)."""
    if code in (CloseCode.INVALID_TOKEN, CloseCode.TOKEN_EXPIRED):
        return CloseAction.RETRY_WITHOUT_TOKEN if used_token else CloseAction.STOP
    return CloseAction.RETRY if should_reconnect(code) else CloseAction.STOP


def build_url(url: str, *, token: str | None = None, positions: str | None = None) -> str:
    """Merge the client's token and positions into `url`'s query string.

    Other parameters are kept as written; a stale ``token`` or ``positions`` is replaced.
    `positions` is left out when the path and query would pass MAX_RESUME_URL with it: the
    server then replays each stream from where the session began (or the client joined
    its group), and the client drops what it had already (Positions.seen).
    """
    parts = urlsplit(url)
    kept = [pair for pair in parts.query.split("&")
            if pair and unquote_plus(pair.split("=", 1)[0]) not in _OWN_PARAMS]
    if token is not None:
        kept.append("token=" + quote(token, safe=""))
    if positions is not None:
        with_positions = [*kept, "positions=" + quote(positions, safe="")]
        query = "&".join(with_positions)
        if len(f"{parts.path}?{query}".encode()) <= MAX_RESUME_URL:
            kept = with_positions
    return urlunsplit(parts._replace(query="&".join(kept)))


def control_frame(text: str, *, history: bool) -> ControlFrame | None:
    """Parse a text frame that is a control frame (or, with history, a wrapped message)."""
    if not text.startswith("{") or '"type"' not in text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # (nested past the parser: an application's text)
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind in CONTROL_TYPES or (history and kind == "message"):
        return value
    return None


def unwrap(frame: Mapping[str, JSONValue]) -> Wrapped:
    """Read a history ``message`` frame.

    Raises:
        WireError: a field is missing or has the wrong type, or data_b64 is not base64.
    """
    stream, offset, epoch = frame.get("stream"), frame.get("offset"), frame.get("epoch")
    unsequenced = offset is None and epoch is None
    if not isinstance(stream, str) or not (unsequenced or (
        isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool)
    )):
        raise WireError("message frame without a valid stream, offset and epoch")
    return Wrapped(stream, offset, epoch, message_payload(frame, f" on {stream!r}"))


def url_source(url: str | Sequence[str] | Callable[[], str],
                client_id: str | None) -> Callable[[], str]:
    if callable(url):
        return url
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ConfigError("connect() needs at least one URL")
    if client_id is not None:
        urls = [u.replace("{client_id}", quote(client_id, safe="")) for u in urls]
    elif any("{client_id}" in u for u in urls):
        raise ConfigError("the URL has a {client_id} placeholder: pass client_id=")
    for each in urls:
        if urlsplit(each).scheme not in ("ws", "wss"):
            raise ConfigError(f"{each!r} is not a ws:// or wss:// URL")
    rotation = itertools.cycle(urls)
    return lambda: next(rotation)


def message_payload(frame: Mapping[str, JSONValue], where: str = "") -> str | bytes:
    """The application message of a ``message`` frame: ``data``, or ``data_b64`` decoded.

    Raises:
        WireError: neither a string ``data`` nor a valid base64 ``data_b64``.
    """
    data, encoded = frame.get("data"), frame.get("data_b64")
    if isinstance(data, str):
        return data
    if not isinstance(encoded, str):
        raise WireError(f"message frame{where} carries neither data nor data_b64")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise WireError(f"message frame{where} has invalid data_b64") from exc
