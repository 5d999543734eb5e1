"""Node-to-node envelopes: round trip, frame type preserved, anything else is a WireError."""

from __future__ import annotations

import msgpack
import pytest

from stabilizer.errors import WireError
from stabilizer.pure.wire import (
    WIRE_VERSION,
    Envelope,
    Kind,
    close_body,
    close_of,
    decode,
    encode,
)


def pack(fields: object) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def valid_fields() -> list[object]:
    return [WIRE_VERSION, int(Kind.DIRECT), "node-a", "alice", "hi", None, None]


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.name)
@pytest.mark.parametrize(
    "payload", ["hello", "", "ünïcødé 🙂", b"\x00\xff\xfe", b"", b"plain ascii bytes", None],
    ids=["text", "empty-text", "unicode-text", "binary", "empty-binary", "ascii-binary", "none"],
)
def test_every_kind_round_trips(kind: Kind, payload: str | bytes | None) -> None:
    envelope = Envelope(kind, "node-a", "target", payload, "excluded", "ref-1")
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert decoded.kind is kind
    assert type(decoded.payload) is type(payload)


@pytest.mark.parametrize(("reason", "carried"), [
    pytest.param("caf\udce9", "caf?", id="lone-surrogate"),
    pytest.param("\ud83d", "?", id="half-of-a-pair"),
    pytest.param("é" * 100, "é" * 61, id="past-123-bytes"),
])
def test_a_close_request_carries_the_reason_a_close_frame_would(reason: str,
                                                                 carried: str) -> None:
    assert close_of(close_body(4400, reason)) == (4400, carried)


def test_minimal_envelope_round_trips() -> None:
    envelope = Envelope(Kind.BROADCAST, "n")
    assert decode(encode(envelope)) == Envelope(Kind.BROADCAST, "n", None, None, None, None)


def test_text_payload_comes_back_as_text_and_binary_as_binary() -> None:
    text = decode(encode(Envelope(Kind.DIRECT, "n", "alice", "{\"a\":1}")))
    binary = decode(encode(Envelope(Kind.DIRECT, "n", "alice", b"{\"a\":1}")))
    assert text.payload == "{\"a\":1}"
    assert binary.payload == b"{\"a\":1}"


def test_ids_with_any_characters_round_trip() -> None:
    envelope = Envelope(Kind.KICK, "node:1.a", "a.b:c*🙂", None, "x" * 256, "\x00")
    assert decode(encode(envelope)) == envelope


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda t: t.__name__)
def test_decode_accepts_any_bytes_like(wrap: type) -> None:
    envelope = Envelope(Kind.GROUP, "n", "room", b"data", "bob")
    assert decode(wrap(encode(envelope))) == envelope


def test_trailing_fields_from_a_later_version_are_ignored() -> None:
    # fields 8 and 9 are offset and epoch (nil: not sequenced), 10 a MEMBERSHIP envelope's
    # holder (nil: none); later ones are unknown
    raw = pack([*valid_fields(), None, None, None, "new-field", {"nested": [1, 2]}, None])
    assert decode(raw) == Envelope(Kind.DIRECT, "node-a", "alice", "hi")


def test_a_membership_change_names_its_holder_after_nil_positions() -> None:
    envelope = Envelope(Kind.MEMBERSHIP, "node-a", "alice", "room", ref="join",
                        holder="c0000000000000001")
    fields = msgpack.unpackb(encode(envelope))
    assert fields[7:] == [None, None, "c0000000000000001"]
    assert decode(encode(envelope)) == envelope
    assert decode(encode(Envelope(Kind.MEMBERSHIP, "n", "alice", "room", holder=""))).holder == ""
    older = pack([WIRE_VERSION, int(Kind.MEMBERSHIP), "node-a", "alice", "room", None, "join"])
    assert decode(older).holder is None  # an older sender names no connection


def test_a_holder_that_is_not_text_is_rejected() -> None:
    with pytest.raises(WireError, match="holder"):
        decode(pack([*valid_fields(), None, None, 7]))


def test_offset_and_epoch_follow_the_seven_base_fields() -> None:
    raw = pack([*valid_fields(), 42, "ep0ch"])
    decoded = decode(raw)
    assert (decoded.offset, decoded.epoch, decoded.stream) == (42, "ep0ch", "c:alice")
    assert decode(encode(decoded)) == decoded


@pytest.mark.parametrize("position", [[0, "e"], [-1, "e"], [True, "e"], [1.5, "e"], [3, ""],
                                      [3, 7]])
def test_malformed_positions_are_rejected(position: list[object]) -> None:
    with pytest.raises(WireError):
        decode(pack([*valid_fields(), *position]))


def test_encoding_is_stable() -> None:
    envelope = Envelope(Kind.EVENT, "n", None, b"\x93\x01\x02\x03")
    assert encode(envelope) == encode(envelope)
    assert msgpack.unpackb(encode(envelope))[0] == WIRE_VERSION


# ----------------------------------------------------------------------------- rejection


@pytest.mark.parametrize(
    "raw", [None, "text", 42, [1, 2, 3], {"version": 1}, object()],
    ids=lambda value: type(value).__name__,
)
def test_non_bytes_is_a_wire_error(raw: object) -> None:
    with pytest.raises(WireError):
        decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never used by msgpack
        b"\x97\x01",  # array of 7 with one item
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4 billion items
        b"\x91" * 100_000,  # nested far past msgpack's stack limit
        pack(valid_fields()) + b"\x00",  # two objects
        pack(valid_fields()) * 2,
        b"\xff" * 64,
        "héllo".encode("latin-1"),
    ],
    ids=["empty", "reserved", "truncated", "huge-header", "deep", "trailing", "twice",
         "negative-fixints", "latin-1"],
)
def test_garbage_bytes_are_a_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode(raw)


def _with(index: int, value: object) -> list[object]:
    fields = valid_fields()
    fields[index] = value
    return fields


@pytest.mark.parametrize(
    "fields",
    [
        None,
        1,
        "envelope",
        b"envelope",
        {"version": 1},
        [],
        valid_fields()[:6],
        _with(0, 0),
        _with(0, 2),
        _with(0, "1"),
        _with(0, None),
        _with(0, [1]),
        _with(1, 0),
        _with(1, 99),
        _with(1, "DIRECT"),
        _with(1, None),
        _with(1, [2]),
        _with(2, ""),
        _with(2, None),
        _with(2, 7),
        _with(2, b"node-a"),
        _with(3, 5),
        _with(3, b"alice"),
        _with(3, ["alice"]),
        _with(4, 5),
        _with(4, ["hi"]),
        _with(4, {"text": "hi"}),
        _with(4, True),
        _with(5, 1),
        _with(5, b"bob"),
        _with(6, 1.5),
        _with(6, {"ref": 1}),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_wrong_shapes_are_a_wire_error(fields: object) -> None:
    with pytest.raises(WireError):
        decode(pack(fields))


def test_map_with_a_non_string_key_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        decode(pack(_with(4, {1: "int key"})))


def test_wrong_version_names_the_version() -> None:
    with pytest.raises(WireError, match="version 2"):
        decode(pack(_with(0, 2)))
