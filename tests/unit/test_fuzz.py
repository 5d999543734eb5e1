"""Property-based fuzzing of everything that parses input from clients or peers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from stabilizer.errors import InvalidClientIdError, TokenError, WireError
from stabilizer.pure.text import (
    MAX_CLOSE_REASON_BYTES,
    check_client_id,
    encode_message,
    truncate_reason,
)
from stabilizer.pure.tokens import TokenClaims, TokenCodec, key_id
from stabilizer.pure.wire import Envelope, Kind, decode, encode

# Hypothesis caches (constants, unicode tables) go to the temp dir, not the checkout; no example
# database and derandomize: every machine runs the same examples.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "stabilizer-unit-hypothesis")
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

KEY = b"k" * 32
NOW = 1_700_000_000.0
CODEC = TokenCodec([KEY], "app")
TOKEN = CODEC.sign("alice", now=NOW, ttl=3600.0)
CLAIMS = CODEC.verify(TOKEN, now=NOW)
BASE64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/."

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def signed(payload: str) -> str:
    head = f"s1.{key_id(KEY)}.{payload}"
    mac = hmac.new(KEY, head.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"{head}.{b64(mac)}"


def verify_outcome(token: object) -> TokenClaims | TokenError:
    """What verify does with `token`; any exception other than a TokenError fails the test."""
    try:
        return CODEC.verify(token, now=NOW)
    except TokenError as exc:
        return exc


# ----------------------------------------------------------------------------- tokens


@FUZZ
@given(st.text(max_size=3000))
def test_verify_of_any_text_raises_only_token_errors(token: str) -> None:
    assert isinstance(verify_outcome(token), TokenError)


@FUZZ
@given(st.lists(st.text(alphabet=BASE64_CHARS + "é\x00", max_size=60), min_size=1, max_size=6))
def test_verify_of_dotted_base64ish_parts_raises_only_token_errors(parts: list[str]) -> None:
    assert isinstance(verify_outcome(".".join(["s1", key_id(KEY), *parts])), TokenError)


@FUZZ
@given(st.integers(0, len(TOKEN)), st.integers(0, 3), st.text(min_size=0, max_size=3))
def test_an_edited_token_never_verifies_as_anything_else(
    position: int, cut: int, insert: str
) -> None:
    edited = TOKEN[:position] + insert + TOKEN[position + cut:]
    outcome = verify_outcome(edited)
    # An edit may be rejected, or be a no-op on the decoded token; it never forges new claims.
    assert isinstance(outcome, TokenError) or outcome == CLAIMS


@FUZZ
@given(st.binary(max_size=1200))
def test_signed_arbitrary_payload_bytes_raise_only_token_errors(payload: bytes) -> None:
    outcome = verify_outcome(signed(b64(payload)))
    assert isinstance(outcome, TokenError | TokenClaims)


@FUZZ
@given(msgpack_values)
def test_signed_arbitrary_msgpack_payload_raises_only_token_errors(value: Any) -> None:
    outcome = verify_outcome(signed(b64(msgpack.packb(value))))
    assert isinstance(outcome, TokenError)


@FUZZ
@given(st.text(max_size=200))
def test_signed_arbitrary_payload_text_raises_only_token_errors(payload: str) -> None:
    assert isinstance(verify_outcome(signed(payload.replace(".", ""))), TokenError)


@FUZZ
@given(st.text(min_size=1, max_size=256))
def test_any_client_id_round_trips_through_a_token(client_id: str) -> None:
    token = CODEC.sign(client_id, now=NOW, ttl=60.0)
    assert CODEC.verify(token, now=NOW).client_id == client_id


# ----------------------------------------------------------------------------- wire


def assert_well_typed(envelope: Envelope) -> None:
    assert isinstance(envelope.kind, Kind)
    assert isinstance(envelope.origin, str)
    assert envelope.origin
    for value in (envelope.target, envelope.exclude, envelope.ref):
        assert value is None or isinstance(value, str)
    assert envelope.payload is None or isinstance(envelope.payload, str | bytes)


def decode_outcome(raw: object) -> Envelope | None:
    """decode(raw), or None for a WireError; any other exception fails the test."""
    try:
        envelope = decode(raw)
    except WireError:
        return None
    assert_well_typed(envelope)
    return envelope


@FUZZ
@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_raises_only_wire_error(raw: bytes) -> None:
    decode_outcome(raw)


@FUZZ
@given(msgpack_values)
def test_decode_of_arbitrary_msgpack_raises_only_wire_error(value: Any) -> None:
    decode_outcome(msgpack.packb(value, use_bin_type=True))


field_values: st.SearchStrategy[Any] = (
    st.sampled_from([None, 0, 1, 5, 6, -1, 2**64 - 1, "", "n", b"b", True, 1.0, [], {}])
    | msgpack_values
)


@FUZZ
@given(st.lists(field_values, min_size=5, max_size=10))
def test_decode_of_near_envelopes_raises_only_wire_error(fields: list[Any]) -> None:
    decode_outcome(msgpack.packb([1, *fields], use_bin_type=True))


envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(Kind),
    origin=st.text(min_size=1, max_size=40),
    target=st.none() | st.text(max_size=40),
    payload=st.none() | st.text(max_size=200) | st.binary(max_size=200),
    exclude=st.none() | st.text(max_size=40),
    ref=st.none() | st.text(max_size=40),
)


@FUZZ
@given(envelopes)
def test_every_valid_envelope_round_trips(envelope: Envelope) -> None:
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert type(decoded.payload) is type(envelope.payload)


@FUZZ
@given(envelopes, st.binary(min_size=1, max_size=8))
def test_a_truncated_or_extended_envelope_raises_only_wire_error(
    envelope: Envelope, extra: bytes
) -> None:
    raw = encode(envelope)
    decode_outcome(raw[: len(raw) // 2])
    decode_outcome(raw + extra)


# ----------------------------------------------------------------------------- _util


def is_usable_client_id(value: object) -> bool:
    """The README's rule: any non-empty string of at most 256 characters that is text
    (no lone surrogates)."""
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


with_lone_surrogate = st.builds(
    lambda head, surrogate, tail: head + surrogate + tail,
    st.text(max_size=5), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=5))


@FUZZ
@given(st.text(max_size=300) | with_lone_surrogate | st.binary(max_size=10) | st.integers()
       | st.none())
@example("alice")
@example("a" * 256)
@example("a" * 257)
@example("")
@example("\ud800")
def test_check_client_id_returns_the_id_or_raises_invalid_client_id(client_id: object) -> None:
    """Accepts exactly the usable ids (a validator that refused everything fails here)."""
    if is_usable_client_id(client_id):
        assert check_client_id(client_id, 256) == client_id
    else:
        with pytest.raises(InvalidClientIdError):
            check_client_id(client_id, 256)


@FUZZ
@given(st.text(max_size=300))
def test_truncate_reason_gives_an_encodable_prefix_within_the_limit(reason: str) -> None:
    truncated = truncate_reason(reason)
    assert reason.startswith(truncated)
    assert len(truncated.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    if len(reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
        assert truncated == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=10,
)


@FUZZ
@given(st.lists(json_values, max_size=5) | st.dictionaries(st.text(), json_values, max_size=5))
def test_encode_message_of_json_values_is_parseable_text(message: Any) -> None:
    encoded = encode_message(message)
    assert isinstance(encoded, str)
    assert json.loads(encoded) == message
