"""Node-to-node envelopes: versioned msgpack, no pickle. Pure.

An envelope is the msgpack array ``[version, kind, origin, target, payload, exclude, ref]``,
followed by ``offset, epoch`` when the message was sequenced into a history stream, and by
``nil, nil, holder`` when a MEMBERSHIP envelope names the connection its change was written
for. Later versions may append fields; a decoder ignores trailing fields it does not know
and rejects any other version. Text payloads travel as msgpack str, binary ones as bin, so the
receiving node gets the exact frame type back without a second decoding step.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import msgpack

from stabilizer.errors import WireError
from stabilizer.pure.json_input import loads
from stabilizer.pure.streams import Target
from stabilizer.pure.text import check_close_code, truncate_reason
from stabilizer.results import ClusterEvent

WIRE_VERSION: Final = 1
_FIELDS: Final = 7
#: The payload of a KICK whose replacing connection began a fresh session.
FRESH: Final = "fresh"
#: How deep the JSON payload of an EVENT, USER_CLOSE or CLIENT_CLOSE may nest (one level).
_PAYLOAD_DEPTH: Final = 2


class Kind(IntEnum):
    """What an envelope asks the receiving node to do."""

    BROADCAST = 1  # deliver `payload` to every local client except `exclude`
    DIRECT = 2  # deliver `payload` to local client `target`
    KICK = 3  # close local client `target` if its conn_id is `ref` (it was replaced);
    # `payload` FRESH when the replacing connection began a fresh session (nil: it resumed
    # the session, or its node is of an older version, which does not say)
    GROUP = 4  # deliver `payload` to local members of group `target` except `exclude`
    EVENT = 5  # a cluster event; `payload` is its JSON text
    MEMBERSHIP = 6  # local client `target` joins (`ref` "join") or leaves group `payload`;
    # `holder`, when set, is the conn id that held the client's memberships when the backend
    # wrote the change ("" none): another connection of the client takes what the backend
    # lists instead
    USER = 7  # deliver `payload` to every local connection of user `target`
    USER_CLOSE = 8  # close every local connection of user `target`; `payload` is
    # the JSON {"code": int, "reason": str}
    CLIENT_CLOSE = 9  # close local client `target` (if its conn_id is `ref`, when set);
    # `payload` as USER_CLOSE's
    ACK = 10  # client `target` acknowledged message `ref` of the receiving node (`payload`
    # nil), or cannot: `payload` "unsupported" (a plain client) or "forgotten" (too many
    # unacknowledged, or gone without a session to resume); an older node leaves `target` nil
    PRESENCE = 11  # the presence of a member of group `target` changed: `payload` is the
    # JSON [old entry, new entry] (pure/presence.py), `ref` the change's version (decimal)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded node-to-node message."""

    kind: Kind
    origin: str
    target: str | None = None
    payload: str | bytes | None = None
    exclude: str | None = None
    ref: str | None = None
    offset: int | None = None
    epoch: str | None = None
    holder: str | None = None

    @property
    def destination(self) -> Target | None:
        """Who a message envelope is for; None for the other kinds."""
        if self.kind is Kind.BROADCAST:
            return Target("all")
        if self.kind is Kind.GROUP and self.target is not None:
            return Target("group", self.target)
        if self.kind is Kind.DIRECT and self.target is not None:
            return Target("client", self.target)
        if self.kind is Kind.USER and self.target is not None:
            return Target("user", self.target)
        return None

    @property
    def stream(self) -> str | None:
        """The history stream this envelope belongs to: ``all``, ``g:<group>``, ``c:<id>``,
        ``u:<user>``."""
        destination = self.destination
        return None if destination is None else destination.stream


def _fields(envelope: Envelope) -> list[object]:
    return [WIRE_VERSION, int(envelope.kind), envelope.origin, envelope.target,
            envelope.payload, envelope.exclude, envelope.ref]


def encode(envelope: Envelope) -> bytes:
    """Serialize an envelope once; the bytes go to every node unchanged."""
    fields = _fields(envelope)
    if envelope.offset is not None or envelope.holder is not None:
        fields += [envelope.offset, envelope.epoch]
    if envelope.holder is not None:
        fields.append(envelope.holder)
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def array_prefix(fields: Sequence[object], total: int) -> bytes:
    """The msgpack bytes of an array of `total` items up to its first ``len(fields)``.

    A Redis script appends the rest (with ``cmsgpack.pack``), so an envelope whose last
    fields only Redis knows is still built in one round trip.
    """
    packer = msgpack.Packer(use_bin_type=True)
    header: bytes = packer.pack_array_header(total)
    return header + b"".join(packer.pack(f) for f in fields)


def sequenced_prefix(envelope: Envelope) -> bytes:
    """A 9-field envelope up to (excluding) the offset and epoch the script assigns."""
    return array_prefix(_fields(envelope), _FIELDS + 2)


def kick_prefix(origin: str, client_id: str, *, fresh: bool = False) -> bytes:
    """A KICK envelope up to its last field, the replaced conn id, which only Redis knows;
    `fresh`: the replacing connection begins a fresh session (its payload says so). (One
    per connect: the part before the client id is the node's, packed once.)"""
    return _kick_head(origin) + pack_str(client_id) + (_FRESH_NIL if fresh else _TWO_NILS)


def pack_str(value: str) -> bytes:
    """msgpack's encoding of a str (what ``msgpack.packb(value)`` returns, without making a
    packer per call).

    Raises:
        UnicodeEncodeError: `value` holds a lone surrogate (msgpack refuses those too).
    """
    data = value.encode("utf-8")
    size = len(data)
    if size < 32:
        return bytes((0xA0 | size,)) + data
    if size < 0x100:
        return b"\xd9" + bytes((size,)) + data
    if size < 0x10000:
        return b"\xda" + size.to_bytes(2, "big") + data
    return b"\xdb" + size.to_bytes(4, "big") + data


_TWO_NILS: Final[bytes] = msgpack.packb(None) * 2
_FRESH_NIL: Final[bytes] = pack_str(FRESH) + msgpack.packb(None)


@functools.lru_cache(maxsize=16)
def _kick_head(origin: str) -> bytes:
    return array_prefix([WIRE_VERSION, int(Kind.KICK), origin], _FIELDS)


def client_close_prefix(origin: str) -> bytes:
    """A CLIENT_CLOSE envelope up to its target: a script appends the client id, the close
    body (packed by the caller: ``pack_str(close_body(...))``), a nil and the conn id."""
    return array_prefix([WIRE_VERSION, int(Kind.CLIENT_CLOSE), origin], _FIELDS)


def event_prefix(origin: str) -> bytes:
    """An EVENT envelope up to its payload: a script appends the event body and two nils."""
    return array_prefix([WIRE_VERSION, int(Kind.EVENT), origin, None], _FIELDS)


def event_body(event: ClusterEvent) -> str:
    """The JSON payload of an EVENT envelope (Redis scripts build the same object)."""
    return json.dumps({"event": event.event, "client_id": event.client_id,
                       "group": event.group, "node_id": event.node_id})


def event_of(payload: str) -> ClusterEvent:
    """Parse the payload of an EVENT envelope.

    Raises:
        WireError: not the JSON object event_body writes.
    """
    try:
        body = loads(payload, _PAYLOAD_DEPTH)
        group = body.get("group")
        return ClusterEvent(str(body["event"]), str(body["client_id"]),
                            None if group is None else str(group), str(body["node_id"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError("malformed cluster event") from exc


def _optional_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise WireError(f"envelope field {name} must be a string or nil, got {type(value).__name__}")


def _short(value: object) -> str:
    """A peer-supplied value for an error message: bounded, never a whole payload."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode(raw: object) -> Envelope:
    """Parse a peer's envelope.

    Raises:
        WireError: for anything stabilizer did not write (wrong type, version, shape).
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise WireError(f"envelope must be bytes, got {type(raw).__name__}")
    try:
        fields = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError("undecodable envelope (not msgpack)") from exc
    if not isinstance(fields, list) or len(fields) < _FIELDS:
        raise WireError("envelope is not an array of at least 7 fields")
    version, kind, origin, target, payload, exclude, ref = fields[:_FIELDS]
    if version != WIRE_VERSION:
        raise WireError(f"envelope version {_short(version)}, expected {WIRE_VERSION}")
    try:
        kind = Kind(kind)
    except ValueError as exc:
        raise WireError(f"unknown envelope kind {_short(kind)}") from exc
    if not isinstance(origin, str) or not origin:
        raise WireError("envelope origin must be a non-empty string")
    if payload is not None and not isinstance(payload, str | bytes):
        raise WireError("envelope payload must be text, binary or nil")
    offset: int | None = None
    epoch: str | None = None
    if len(fields) >= _FIELDS + 2 and fields[_FIELDS] is not None:
        offset, epoch = fields[_FIELDS], fields[_FIELDS + 1]
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 1:
            raise WireError("envelope offset must be a positive integer")
        if not isinstance(epoch, str) or not epoch:
            raise WireError("envelope epoch must be a non-empty string")
    holder = fields[_FIELDS + 2] if len(fields) > _FIELDS + 2 else None
    return Envelope(
        kind,
        origin,
        _optional_str(target, "target"),
        payload,
        _optional_str(exclude, "exclude"),
        _optional_str(ref, "ref"),
        offset,
        epoch,
        _optional_str(holder, "holder"),
    )


def close_body(code: int, reason: str) -> str:
    """The JSON payload of a USER_CLOSE or CLIENT_CLOSE envelope, whose reason is the one
    a close frame carries (truncate_reason: at most 123 UTF-8 bytes, a lone surrogate as
    "?"), as the node holding the connection sends it: close_of refuses a lone surrogate,
    so a reason left as it is would drop the close request."""
    return json.dumps({"code": code, "reason": truncate_reason(reason)})


def close_of(payload: str) -> tuple[int, str]:
    """Parse the payload of a USER_CLOSE or CLIENT_CLOSE envelope: (code, reason).

    Raises:
        WireError: not the JSON object close_body writes, or a code no sender may use
            (check_close_code: a close with another would be no valid close frame).
    """
    try:
        body = loads(payload, _PAYLOAD_DEPTH)
        code, reason = check_close_code(body["code"]), body["reason"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"malformed close request: {exc}") from exc
    if not isinstance(reason, str):
        raise WireError("malformed close request: the reason is not text")
    return code, reason
