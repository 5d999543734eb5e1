"""Every frame the server writes to a client, and the test for the heartbeat frames a client
sends (pure). docs/protocol.md describes each of them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Final

PONG: Final = "pong"
PING: Final = "ping"
PONG_FRAME: Final = '{"type":"pong"}'
_SMALL_CONTROL: Final = 256


def _dump(body: dict[str, object]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def session_frame(
    *, client_id: str, conn_id: str, node_id: str, resumed: bool, token: str | None,
    heartbeat_interval: float, history: bool, v2: Mapping[str, object] | None = None,
) -> str:
    """The first frame of a session: who the client is, where, and its reconnect token;
    `v2` adds the fields of protocol v2 (protocol, device, user_id, expires_at,
    max_message_size)."""
    body: dict[str, object] = {
        "type": "session", "client_id": client_id, "conn_id": conn_id, "node_id": node_id,
        "resumed": resumed, "token": token, "heartbeat_interval": heartbeat_interval,
        "history": history}
    if v2 is not None:
        body.update(v2)
    return json.dumps(body, separators=(",", ":"))  # ASCII: ids may hold any character


def ping_body(timestamp: float) -> dict[str, object]:
    """A heartbeat ping as an object; the client answers ``pong`` (any frame counts)."""
    return {"type": PING, "timestamp": timestamp}


def ping_frame(timestamp: float) -> str:
    """A heartbeat ping as the text the server sends."""
    return _dump(ping_body(timestamp))


def rate_limited_frame(detail: str) -> str:
    """Tells a client that a message over its rate limit was dropped."""
    return error_frame("rate_limited", detail)


def message_frame(stream: str, offset: int | None, epoch: str | None,
                  payload: str | bytes, ack: str | None = None) -> str:
    """A sequenced message, built once per message (offset and epoch are null when it could
    not be sequenced because the backend was down); `ack` asks the client to acknowledge."""
    body: dict[str, object] = {"type": "message", "stream": stream, "offset": offset,
                               "epoch": epoch}
    if ack is not None:
        body["ack"] = ack
    if isinstance(payload, str):
        body["data"] = payload
    else:
        body["data_b64"] = base64.b64encode(payload).decode("ascii")
    return _dump(body)


def app_message_frame(text: str, channel: str | None = None, ack: str | None = None) -> str:
    """An application's text message as a v2 client receives it (history off), with the
    channel (group) it was sent to, and the token to acknowledge it with, if any."""
    body: dict[str, object] = {"type": "message", "data": text}
    if channel is not None:
        body["channel"] = channel
    if ack is not None:
        body["ack"] = ack
    return _dump(body)


def binary_message_frame(data: bytes, channel: str | None = None,
                         ack: str | None = None) -> str:
    """An application's binary message in a v2 ``message`` frame (history off), to carry
    the channel (group) it was sent to, or the token to acknowledge it with."""
    body: dict[str, object] = {"type": "message",
                               "data_b64": base64.b64encode(data).decode("ascii")}
    if channel is not None:
        body["channel"] = channel
    if ack is not None:
        body["ack"] = ack
    return _dump(body)


def refresh_frame(expires_at: float) -> str:
    """Asks a v2 client for fresh credentials before `expires_at` (Unix seconds) passes."""
    return _dump({"type": "refresh", "expires_at": expires_at})


def refreshed_frame(expires_at: float | None) -> str:
    """Confirms a v2 client's fresh credentials."""
    return _dump({"type": "refreshed", "expires_at": expires_at})


def error_frame(code: str, detail: str) -> str:
    """Tells a client one of its frames was dropped, and why (ASCII: a detail may quote
    what the client sent)."""
    return json.dumps({"type": "error", "code": code, "detail": detail},
                      separators=(",", ":"))


def reply_frame(call_id: int | str, result: object) -> str:
    """The answer to a v2 client's ``rpc``: the procedure's return value.

    Raises:
        TypeError, ValueError: the result is not a JSON value (or nests without end), or
            holds text UTF-8 cannot encode (a lone surrogate).
    """
    text = json.dumps({"type": "reply", "id": call_id, "result": result},
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        text.encode("utf-8")  # (UnicodeEncodeError is a ValueError)
    return text


def reply_error_frame(call_id: int | str, code: str, message: str,
                      data: object = None) -> str:
    """The answer to a v2 client's ``rpc`` that returned no value (``data`` must be JSON)."""
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    # ASCII: a message or data the application wrote always has a frame that carries it
    return json.dumps({"type": "reply", "id": call_id, "error": error},
                      separators=(",", ":"), allow_nan=False)


def resume_frame(replayed: int, failed: list[str], *, fresh: bool = False) -> str:
    """Ends a replay: whether everything was recovered, how much, and what could not be;
    `fresh` when the session was gone and a fresh one began (its memberships with it: a
    client subscribes again)."""
    body: dict[str, object] = {"type": "resume", "recovered": not failed,
                               "replayed": replayed, "failed": failed}
    if fresh:
        body["fresh"] = True
    return _dump(body)


def control_type(text: str) -> str | None:
    """Return "pong" or "ping" for a heartbeat frame from a client, else None.

    Heartbeat frames are the text ``pong`` or a small JSON object whose "type" is "pong" or
    "ping". Anything else is an application message.
    """
    if text == PONG:
        return PONG
    if len(text) > _SMALL_CONTROL or not text.startswith("{") or '"type"' not in text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("type") in (PONG, PING):
        return str(value["type"])
    return None


def utf8_size_over(text: str, limit: int) -> bool:
    """True when `text` takes more than `limit` bytes in UTF-8 (cheap for ASCII)."""
    length = len(text)
    if length > limit:
        return True
    if length * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def presence_state_frame(channel: str, presence: Mapping[str, object]) -> str:
    """A channel's whole presence, once after a ``subscribe`` with ``presence: true``."""
    return _dump({"type": "presence_state", "channel": channel, "presence": presence})


def presence_diff_frame(channel: str, diff: Mapping[str, object]) -> str:
    """The changes of a channel's presence since the last frame: ``joins`` and ``leaves``."""
    return _dump({"type": "presence_diff", "channel": channel, "joins": diff["joins"],
                  "leaves": diff["leaves"]})


#: The ``reason`` of an ``unsubscribed`` frame: the server (the application, or a settle
#: with the backend) ended the subscription, not the client.
UNSUBSCRIBED_BY_SERVER: Final = "server"


def unsubscribed_frame(channel: str, reason: str = UNSUBSCRIBED_BY_SERVER) -> str:
    """The server took a v2 client out of `channel` without its asking."""
    return _dump({"type": "unsubscribed", "channel": channel, "reason": reason})
