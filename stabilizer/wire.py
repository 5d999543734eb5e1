"""Node-to-node envelopes: versioned msgpack, no pickle. Pure.

An envelope is the msgpack array ``[version, kind, origin, target, payload, exclude, ref]``,
followed by ``offset, epoch`` when the message was sequenced into a history stream. Later
versions may append fields; a decoder ignores trailing fields it does not know and rejects
any other version. Text payloads travel as msgpack str, binary ones as bin, so the
receiving node gets the exact frame type back without a second decoding step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import msgpack

from stabilizer.errors import WireError

WIRE_VERSION: Final = 1
_FIELDS: Final = 7


class Kind(IntEnum):
    """What an envelope asks the receiving node to do."""

    BROADCAST = 1  # deliver `payload` to every local client except `exclude`
    DIRECT = 2  # deliver `payload` to local client `target`
    KICK = 3  # close local client `target` if its conn_id is `ref` (it was replaced)
    GROUP = 4  # deliver `payload` to local members of group `target` except `exclude`
    EVENT = 5  # a cluster event; `payload` is its JSON text
    MEMBERSHIP = 6  # local client `target` joins (`ref` "join") or leaves group `payload`


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

    @property
    def stream(self) -> str | None:
        """The history stream this envelope belongs to: ``all``, ``g:<group>``, ``c:<id>``."""
        if self.kind is Kind.BROADCAST:
            return "all"
        if self.kind is Kind.GROUP and self.target is not None:
            return f"g:{self.target}"
        if self.kind is Kind.DIRECT and self.target is not None:
            return f"c:{self.target}"
        return None


def _fields(envelope: Envelope) -> list[object]:
    return [WIRE_VERSION, int(envelope.kind), envelope.origin, envelope.target,
            envelope.payload, envelope.exclude, envelope.ref]


def encode(envelope: Envelope) -> bytes:
    """Serialize an envelope once; the bytes go to every node unchanged."""
    fields = _fields(envelope)
    if envelope.offset is not None:
        fields += [envelope.offset, envelope.epoch]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def sequenced_prefix(envelope: Envelope) -> bytes:
    """The bytes of a 9-field envelope up to (excluding) offset and epoch.

    A Redis script appends the msgpack of the offset and epoch it assigns, so the envelope
    it stores and publishes is complete without a second round trip.
    """
    return b"\x99" + b"".join(msgpack.packb(f, use_bin_type=True) for f in _fields(envelope))


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
    return Envelope(
        kind,
        origin,
        _optional_str(target, "target"),
        payload,
        _optional_str(exclude, "exclude"),
        _optional_str(ref, "ref"),
        offset,
        epoch,
    )
