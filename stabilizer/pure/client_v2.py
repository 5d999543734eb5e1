"""The client's pure half of protocol v2 (docs/protocol.md, section 6): the handshake
check, what get_token may return, and the frames a v2 client writes and reads.

No I/O here (``stabilizer.client.v2`` does the networking); tested with plain calls in
tests/unit/test_client_v2.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

from stabilizer.config import CloseCode
from stabilizer.errors import RPCError
from stabilizer.pure.client_protocol import (
    MAX_RESUME_TEXT,
    ControlFrame,
    HandshakeRejectedError,
)
from stabilizer.pure.streams import group_stream
from stabilizer.pure.text import JSONValue, check_group
from stabilizer.pure.v2 import MAX_HELD_CHANNELS, SUBPROTOCOL, is_method


def require_v2(subprotocol: str | None, url: str) -> None:
    """Accept a handshake only when the server chose protocol v2.

    Raises:
        HandshakeRejectedError: it chose none (an older server, or an endpoint that
            accepts the socket itself): it would not understand the connect frame.
    """
    if subprotocol != SUBPROTOCOL:
        raise HandshakeRejectedError(
            f"{url} does not speak stabilizer protocol v2 (it selected subprotocol "
            f"{subprotocol!r}, not {SUBPROTOCOL!r}); upgrade the server or connect with "
            "protocol=1", reason="protocol v2 not supported")


#: The closes that carry retry advice: a server that accepts a socket only to close it with
#: one of them (an older one draining) refuses it for now, whatever subprotocol it chose.
ADVISED_CLOSES: Final = frozenset({CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER})


def checked_token(value: object) -> str | None:
    """What get_token returned, if usable: a non-empty str, or None (no token).

    Raises:
        TypeError: anything else.
    """
    if value is None or (isinstance(value, str) and value):
        return value
    raise TypeError(f"get_token must return a non-empty str or None, got {value!r:.40}")


def _dump(body: Mapping[str, JSONValue]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def connect_frame(*, token: str | None, device: str | None,
                  reconnect_token: str | None = None,
                  positions: Mapping[str, tuple[int, str]] | None = None,
                  params: Mapping[str, JSONValue] | None = None,
                  channels: Sequence[str] = (), max_size: int | None = None) -> str:
    """The first frame of a v2 connection; positions and the channels the client holds
    go only with a reconnect token. Together they take at most MAX_RESUME_TEXT bytes of
    the frame (as positions alone may) and, with `max_size` (the max_message_size of the
    server's last session frame), no more than the rest of the frame leaves under it.
    Positions go whole or not at all: without them the server replays from the session's
    start (and the client drops what it had). A channel whose ``g:`` position is sent is
    not named (the server counts it as held already); the others are named while they fit
    (and at most MAX_HELD_CHANNELS of them). A channel left out is not told a leave made
    while the client was away: its ``unsubscribed`` notice is lost, the client keeps the
    subscription, and into a kept session it subscribes again to one that follows
    presence, which joins it again (docs/protocol.md 6.6)."""
    body: dict[str, JSONValue] = {"type": "connect"}
    for name, value in (("token", token), ("reconnect_token", reconnect_token),
                        ("device", device)):
        if value is not None:
            body[name] = value
    extra: dict[str, JSONValue] = {"params": dict(params)} if params else {}
    if reconnect_token is not None and (positions or channels):
        room = _resume_room(body | extra, max_size)
        sent: dict[str, JSONValue] = {stream: [offset, epoch] for stream, (offset, epoch)
                                      in (positions or {}).items()}
        if sent and _size(sent) <= room:
            body["positions"] = sent
            room -= _size(sent)
        else:
            sent = {}
        named = held_channels(
            [channel for channel in channels if group_stream(channel) not in sent], room)
        if named:
            body["channels"] = list(named)
    return _dump(body | extra)


def _resume_room(body: Mapping[str, JSONValue], max_size: int | None) -> int:
    """The bytes a resume's positions and channels may take together in a connect frame
    whose other fields are `body`: MAX_RESUME_TEXT, or less when the server reads frames
    of at most `max_size` bytes (UTF-8), less what the rest of the frame takes there."""
    if max_size is None:
        return MAX_RESUME_TEXT
    # (the frame with both fields empty, "{}" and "[]", is the rest and their keys)
    rest = _size({**body, "positions": {}, "channels": []}) - len("{}[]")
    return min(MAX_RESUME_TEXT, max_size - rest)


def held_channels(channels: Sequence[str], room: int) -> Sequence[str]:
    """The first of `channels` (at most MAX_HELD_CHANNELS) whose names fit `room` bytes
    of a frame's JSON text (UTF-8)."""
    used = 2  # []
    for count, channel in enumerate(channels[:MAX_HELD_CHANNELS]):
        used += _size(channel) + 1  # (and a comma)
        if used > room:
            return channels[:count]
    return channels[:MAX_HELD_CHANNELS]


def _size(value: JSONValue) -> int:
    """The bytes `value` takes in a frame (UTF-8: what a server's max_message_size
    counts)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def refresh_frame(token: str) -> str:
    """Fresh credentials for a live v2 connection."""
    return _dump({"type": "refresh", "token": token})


def outgoing(message: str | bytes, protocol: int) -> str | bytes:
    """What goes on the wire for an application message: v2 wraps text."""
    if protocol >= 2 and isinstance(message, str):
        return _dump({"type": "message", "data": message})
    return message


def check_size(frame: str | bytes, max_size: int | None) -> None:
    """Refuse a frame over `max_size` bytes (UTF-8 for text), the max_message_size a
    server stated (None: it stated none): it would close the connection with 1009, which
    ends a client for good.

    Raises:
        ValueError: the frame is over it.
    """
    if max_size is None:
        return
    if isinstance(frame, str):
        if len(frame) * 4 <= max_size:  # (a character takes 4 bytes at most)
            return
        size = len(frame.encode("utf-8", "surrogatepass"))
    else:
        size = len(frame)
    if size > max_size:
        raise ValueError(f"a frame of {size} bytes is over the server's max_message_size "
                         f"({max_size} bytes), which would close the connection; send less")


def v2_frame(text: str) -> ControlFrame | None:
    """A v2 server text frame (every one is a JSON object with a string type); None
    for anything else."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return value
    return None


def malformed(frame: ControlFrame) -> str | None:
    """Why the client cannot act on the server frame `frame` (a field it reads is missing
    or of the wrong type: a ``resume`` frame, in either protocol, or an ``unsubscribed``
    one), or None when it can. Such a frame is dropped with a warning."""
    kind = frame.get("type")
    if kind == "resume":
        replayed, failed = frame.get("replayed"), frame.get("failed")
        if (isinstance(frame.get("recovered"), bool) and type(replayed) is int
                and replayed >= 0 and isinstance(failed, list)
                and all(isinstance(stream, str) for stream in failed)):
            return None
        return "a resume frame without recovered, replayed and failed"
    if kind == "unsubscribed" and not isinstance(frame.get("channel"), str):
        return "an unsubscribed frame without a channel"
    return None


def rpc_frame(call_id: int, method: str, params: JSONValue) -> str:
    """A call of the server's procedure `method` (docs/protocol.md 6.5).

    Raises:
        ValueError: a method name the server would refuse, or params that are not JSON.
        TypeError: params that are not JSON.
    """
    if not is_method(method):
        raise ValueError(f"an RPC method name is 1-128 characters of A-Z a-z 0-9 and "
                         f". _ : / -, got {method!r:.60}")
    body: dict[str, JSONValue] = {"type": "rpc", "id": call_id, "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def reply_outcome(frame: ControlFrame) -> tuple[int | str | None, JSONValue, RPCError | None]:
    """A ``reply`` frame's call id, result, and error (None when the call returned)."""
    ident = frame.get("id")
    if not (type(ident) is int or isinstance(ident, str)):
        ident = None
    error = frame.get("error")
    if error is None:
        return ident, frame.get("result"), None
    if not isinstance(error, dict):
        return ident, None, RPCError("bad_reply", "the server's reply has a malformed error")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not 0 < len(code) <= 64:
        code = "bad_reply"
    return ident, None, RPCError(code, message if isinstance(message, str) else "",
                                 error.get("data"))


def channel_frame(kind: str, call_id: int, channel: str, value: JSONValue = None, *,
                  presence: bool = False) -> str:
    """A ``subscribe`` (value: params; `presence` to follow the channel's presence),
    ``unsubscribe`` or ``publish`` (value: data) frame (docs/protocol.md 6.6, 6.8).

    Raises:
        ValueError: a channel the server would refuse, or a value that is not JSON.
        TypeError: a value that is not JSON, or publish data that is not a str, dict or list.
    """
    try:
        check_group(channel)
    except ValueError as exc:
        raise ValueError(str(exc).replace("group", "channel")) from exc
    body: dict[str, JSONValue] = {"type": kind, "id": call_id, "channel": channel}
    if kind == "publish":
        if not isinstance(value, str | dict | list):
            raise TypeError("publish data must be a str, a dict or a list")
        body["data"] = value
    elif kind == "subscribe" and value is not None:
        body["params"] = value
    if kind == "subscribe" and presence:
        body["presence"] = True
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def ack_frame(token: str) -> str:
    """Acknowledges a message frame that carried `token` in its ``ack``."""
    return _dump({"type": "ack", "id": token})
