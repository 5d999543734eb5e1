"""Protocol v2, the client's side of it (pure): the subprotocol name, the ``connect``
frame and the frames a v2 client sends afterwards. docs/protocol.md, section 6.

Everything here is client input: each value is checked for type and size, JSON nesting is
bounded before the parser runs, and every refusal is a ProtocolError whose message names
the problem (it becomes the reason of a 1008 close or of an ``error`` frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from stabilizer.pure.json_input import loads
from stabilizer.pure.positions import Positions, PositionsError, positions_of
from stabilizer.pure.text import check_group
from stabilizer.pure.users import is_device

SUBPROTOCOL: Final = "stabilizer.v2"
#: How deep a v2 client frame may nest (``params`` is the application's).
MAX_DEPTH: Final = 16
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: The most channels a ``connect`` frame may name as held (as many as positions).
MAX_HELD_CHANNELS: Final = 1000


class ProtocolError(ValueError):
    """A v2 client sent a frame that is not the documented shape."""


class FrameTooBigError(ProtocolError):
    """A v2 client's handshake frame is over max_message_size (closed with 1009)."""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a v2 client's ``connect`` frame asks for."""

    token: str | None = None
    reconnect_token: str | None = None
    positions: Positions = field(default_factory=dict)
    device: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    channels: frozenset[str] = frozenset()


def offered(subprotocols: object) -> bool:
    """True when the client offered the v2 subprotocol in its handshake."""
    return isinstance(subprotocols, list | tuple) and SUBPROTOCOL in subprotocols


def client_frame(text: str) -> tuple[str, dict[str, Any]]:
    """Decode a v2 client text frame into (type, body).

    Raises:
        ProtocolError: not a JSON object with a string ``type`` (or nested too deep).
    """
    if not text.startswith("{"):
        raise ProtocolError("a frame must be a JSON object (nested at most 16 deep)")
    try:
        body = loads(text, MAX_DEPTH)
    except ValueError as exc:
        raise ProtocolError(f"a frame must be a JSON object ({exc})") from exc
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError('a frame must be a JSON object with a string "type"')
    return body["type"], body


def _optional_text(body: Mapping[str, Any], name: str, limit: int,
                   frame: str = "connect") -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{frame}: {name} must be a non-empty string of at most "
                            f"{limit} characters")
    return value


def parse_connect(text: str) -> ConnectRequest:
    """Decode the first frame of a v2 connection.

    Raises:
        ProtocolError: not a ``connect`` frame, or a field of the wrong type or size.
    """
    kind, body = client_frame(text)
    if kind != "connect":
        raise ProtocolError(f"the first frame must be connect, got {kind[:40]!r}")
    device = body.get("device")
    if device is not None and not is_device(device):
        raise ProtocolError("connect: device must be 1-64 characters of A-Z a-z 0-9 . _ ~ -")
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError("connect: params must be an object")
    positions: Positions = {}
    if body.get("positions") is not None:
        try:
            positions = positions_of(body["positions"])
        except PositionsError as exc:
            raise ProtocolError(f"connect: {exc}") from exc
    return ConnectRequest(
        token=_optional_text(body, "token", MAX_TOKEN_LENGTH),
        reconnect_token=_optional_text(body, "reconnect_token", MAX_TOKEN_LENGTH),
        positions=positions, device=device, params=params,
        channels=_held_channels(body.get("channels")))


def _held_channels(value: object) -> frozenset[str]:
    """The channels a resuming client says it holds (``channels``: absent or a list).

    Raises:
        ProtocolError: not a list of at most 1,000 channel names.
    """
    if value is None:
        return frozenset()
    if not isinstance(value, list) or len(value) > MAX_HELD_CHANNELS:
        raise ProtocolError(f"connect: channels must be a list of at most "
                            f"{MAX_HELD_CHANNELS} channel names")
    try:
        return frozenset(check_group(channel) for channel in value)
    except ValueError as exc:
        raise ProtocolError(f"connect: channels: {exc}") from exc


def refresh_token(body: Mapping[str, Any]) -> str:
    """The token of a ``refresh`` frame.

    Raises:
        ProtocolError: missing, not a string, or too long.
    """
    token = _optional_text(body, "token", MAX_TOKEN_LENGTH, "refresh")
    if token is None:
        raise ProtocolError("refresh: token is missing")
    return token


def message_data(body: Mapping[str, Any]) -> str:
    """The application text of a ``message`` frame.

    Raises:
        ProtocolError: ``data`` is not a string.
    """
    data = body.get("data")
    if not isinstance(data, str):
        raise ProtocolError("message: data must be a string")
    return data


#: The largest integer call id (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_CALL_ID: Final = 2**53 - 1
MAX_METHOD_LENGTH: Final = 128
_METHOD_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-")

#: A call id: what the client chose, echoed in the reply.
CallId = int | str


class BadCallError(ProtocolError):
    """An ``rpc`` frame with a usable id but a bad method or params: answered with a
    ``reply`` carrying the error ``bad_request``."""

    def __init__(self, call_id: CallId, problem: str) -> None:
        super().__init__(problem)
        self.call_id = call_id


@dataclass(frozen=True, slots=True)
class CallRequest:
    """What a v2 client's ``rpc`` frame asks for."""

    call_id: CallId
    method: str
    params: Any


def is_method(name: object) -> TypeGuard[str]:
    """1 to 128 characters of A-Z a-z 0-9 and ``. _ : / -``."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_METHOD_LENGTH
            and all(char in _METHOD_CHARS for char in name))


def call_id(value: object, kind: str) -> CallId:
    """A call id as the client sent it in a frame of type `kind` (named in the error).

    Raises:
        ProtocolError: not an integer from 0 to 2**53 - 1 nor a string of 1 to 64
            characters (no reply can name it).
    """
    if type(value) is int and 0 <= value <= MAX_CALL_ID:
        return value
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    raise ProtocolError(f"{kind}: id must be an integer from 0 to 2**53-1 or a string of 1 "
                        "to 64 characters")


def parse_rpc(body: Mapping[str, Any]) -> CallRequest:
    """The call an ``rpc`` frame asks for (``params`` may be any JSON value, or absent).

    Raises:
        ProtocolError: the id is unusable (the frame gets an ``error`` frame).
        BadCallError: the id is fine but the method is not (the frame gets a ``reply``).
    """
    ident = call_id(body.get("id"), "rpc")
    method = body.get("method")
    if not is_method(method):
        raise BadCallError(ident, "rpc: method must be 1-128 characters of A-Z a-z 0-9 "
                                  "and . _ : / -")
    return CallRequest(ident, method, body.get("params"))


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """What a v2 client's ``subscribe``, ``unsubscribe`` or ``publish`` frame asks for:
    ``value`` is the subscribe's ``params`` or the publish's ``data`` (None otherwise)."""

    call_id: CallId
    channel: str
    value: Any
    presence: bool = False  # a subscribe that follows the channel's presence


def parse_channel_request(kind: str, body: Mapping[str, Any]) -> ChannelRequest:
    """The request of a ``subscribe``, ``unsubscribe`` or ``publish`` frame.

    Raises:
        ProtocolError: the id is unusable (the frame gets an ``error`` frame).
        BadCallError: the channel is not a usable group name, or a publish has no data.
    """
    ident = call_id(body.get("id"), kind)
    try:
        channel = check_group(body.get("channel"))
    except ValueError as exc:
        raise BadCallError(ident, f"{kind}: {str(exc).replace('group', 'channel')}") from exc
    value = None
    presence = False
    if kind == "subscribe":
        value = body.get("params")
        presence = body.get("presence", False)
        if not isinstance(presence, bool):
            raise BadCallError(ident, "subscribe: presence must be true or false")
    elif kind == "publish":
        value = body.get("data")
        if not isinstance(value, str | dict | list):
            raise BadCallError(ident, "publish: data must be a string, an object or an array")
    return ChannelRequest(ident, channel, value, presence)
