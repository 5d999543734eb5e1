"""TokenCodec: sign/verify round trip, expiry, tampering, namespaces, rotation, garbage."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import msgpack
import pytest

from stabilizer.errors import InvalidTokenError, TokenError, TokenExpiredError
from stabilizer.pure.tokens import (
    MAX_TOKEN_LENGTH,
    TokenClaims,
    TokenCodec,
    claimed_client_id,
    key_id,
)

OLD_KEY = b"o" * 32
NEW_KEY = b"n" * 32
OTHER_KEY = b"x" * 32
NOW = 1_700_000_000.0
TTL = 3600.0


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def forge(key: bytes, payload: str, *, kid: str | None = None) -> str:
    """A token in the documented s1 format whose payload part is `payload`, signed by `key`."""
    head = f"s1.{key_id(key) if kid is None else kid}.{payload}"
    mac = hmac.new(key, head.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return f"{head}.{b64(mac)}"


def forge_fields(key: bytes, fields: object) -> str:
    return forge(key, b64(msgpack.packb(fields)))


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec([OLD_KEY], "app")


def replace_part(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flip_char(text: str, index: int, bit: int = 32) -> str:
    """Change one base64 character; the default flips its top bit, which always carries data."""
    position = index % len(text)
    swapped = ALPHABET[ALPHABET.index(text[position]) ^ bit]
    return text[:position] + swapped + text[position + 1:]


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "client_id",
    ["alice", "a.b.c", "user:42", "*", "..", "::", "a.b:c*d", "ünïcødé", "用户", "🙂.🙃",
     "x" * 256, " spaces and\ttabs ", "=+/-_"],
)
def test_sign_then_verify_returns_the_client_id(codec: TokenCodec, client_id: str) -> None:
    token = codec.sign(client_id, now=NOW, ttl=TTL)
    claims = codec.verify(token, now=NOW + 1)
    assert claims.client_id == client_id


def test_claims_carry_issue_and_expiry_times(codec: TokenCodec) -> None:
    claims = codec.verify(codec.sign("alice", now=NOW, ttl=90.0), now=NOW)
    assert claims.issued_at == NOW
    assert claims.expires_at == NOW + 90.0
    assert isinstance(claims, TokenClaims)


def test_each_token_has_its_own_nonce(codec: TokenCodec) -> None:
    nonces = {codec.verify(codec.sign("alice", now=NOW, ttl=TTL), now=NOW).nonce
              for _ in range(20)}
    assert len(nonces) == 20


def test_token_is_url_safe_text_with_four_parts(codec: TokenCodec) -> None:
    token = codec.sign("a.b:c/d?e=f&g", now=NOW, ttl=TTL)
    assert re.fullmatch(r"s1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)


def test_token_does_not_contain_the_key(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    assert b64(OLD_KEY) not in token
    assert key_id(OLD_KEY) != key_id(NEW_KEY)


def test_a_codec_needs_a_key() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        TokenCodec([], "app")


def test_generated_keys_are_random_32_bytes() -> None:
    first, second = TokenCodec.generate_key(), TokenCodec.generate_key()
    assert len(first) == len(second) == 32
    assert first != second


# ----------------------------------------------------------------------------- expiry


def test_token_is_valid_until_just_before_expiry(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=10.0)
    assert codec.verify(token, now=NOW + 9.999).client_id == "alice"


@pytest.mark.parametrize("later", [10.0, 10.001, 11.0, 86400.0])
def test_token_expires_at_issue_plus_ttl(codec: TokenCodec, later: float) -> None:
    token = codec.sign("alice", now=NOW, ttl=10.0)
    with pytest.raises(TokenExpiredError, match="expired"):
        codec.verify(token, now=NOW + later)


def test_expired_is_a_token_error_but_not_an_invalid_token(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=1.0)
    with pytest.raises(TokenError) as info:
        codec.verify(token, now=NOW + 5)
    assert not isinstance(info.value, InvalidTokenError)


def test_expiry_is_checked_after_the_signature(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=1.0)
    forged = replace_part(token, 3, flip_char(token.split(".")[3], 0))
    with pytest.raises(InvalidTokenError):
        codec.verify(forged, now=NOW + 5)


# ----------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("index", [0, 5, -1])
def test_tampered_payload_is_invalid(codec: TokenCodec, index: int) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    payload = token.split(".")[2]
    with pytest.raises(InvalidTokenError, match="signature"):
        codec.verify(replace_part(token, 2, flip_char(payload, index)), now=NOW)


def test_payload_of_another_token_under_this_signature_is_invalid(codec: TokenCodec) -> None:
    alice = codec.sign("alice", now=NOW, ttl=TTL)
    mallory = codec.sign("mallory", now=NOW, ttl=TTL)
    spliced = replace_part(alice, 2, mallory.split(".")[2])
    with pytest.raises(InvalidTokenError):
        codec.verify(spliced, now=NOW)


@pytest.mark.parametrize("index", [0, 10, -1])
def test_tampered_signature_is_invalid(codec: TokenCodec, index: int) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    signature = token.split(".")[3]
    with pytest.raises(InvalidTokenError):
        codec.verify(replace_part(token, 3, flip_char(signature, index)), now=NOW)


def test_truncated_signature_is_invalid(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        codec.verify(token[:-4], now=NOW)


@pytest.mark.parametrize("alteration", ["append-=", "append-==", "last-char-low-bit"])
def test_altered_signature_text_is_invalid(codec: TokenCodec, alteration: str) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    if alteration == "last-char-low-bit":
        # 43 characters carry 258 bits for a 256-bit MAC: the last two are padding.
        altered = replace_part(token, 3, flip_char(token.split(".")[3], -1, bit=1))
    else:
        altered = token + alteration.removeprefix("append-")
    assert altered != token
    with pytest.raises(InvalidTokenError):
        codec.verify(altered, now=NOW)


def test_signature_of_another_key_under_this_key_id_is_invalid(codec: TokenCodec) -> None:
    forged = forge(OTHER_KEY, codec.sign("alice", now=NOW, ttl=TTL).split(".")[2],
                   kid=key_id(OLD_KEY))
    with pytest.raises(InvalidTokenError, match="signature"):
        codec.verify(forged, now=NOW)


def test_key_id_switched_to_another_known_key_is_invalid() -> None:
    signer = TokenCodec([OLD_KEY], "app")
    verifier = TokenCodec([NEW_KEY, OLD_KEY], "app")
    token = signer.sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        verifier.verify(replace_part(token, 1, key_id(NEW_KEY)), now=NOW)


def test_unknown_key_id_is_invalid(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError, match="key"):
        codec.verify(replace_part(token, 1, key_id(OTHER_KEY)), now=NOW)


def test_token_of_another_namespace_is_invalid() -> None:
    token = TokenCodec([OLD_KEY], "tenant-a").sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError, match="namespace"):
        TokenCodec([OLD_KEY], "tenant-b").verify(token, now=NOW)


def test_token_of_a_codec_with_another_key_is_invalid(codec: TokenCodec) -> None:
    token = TokenCodec([OTHER_KEY], "app").sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        codec.verify(token, now=NOW)


# ----------------------------------------------------------------------------- rotation


def test_rotated_codec_verifies_tokens_signed_with_the_old_key() -> None:
    old_token = TokenCodec([OLD_KEY], "app").sign("alice", now=NOW, ttl=TTL)
    rotated = TokenCodec([NEW_KEY, OLD_KEY], "app")
    assert rotated.verify(old_token, now=NOW).client_id == "alice"


def test_rotated_codec_signs_with_the_new_key() -> None:
    rotated = TokenCodec([NEW_KEY, OLD_KEY], "app")
    token = rotated.sign("alice", now=NOW, ttl=TTL)
    assert TokenCodec([NEW_KEY], "app").verify(token, now=NOW).client_id == "alice"
    with pytest.raises(InvalidTokenError):
        TokenCodec([OLD_KEY], "app").verify(token, now=NOW)


def test_dropping_the_old_key_rejects_its_tokens() -> None:
    old_token = TokenCodec([OLD_KEY], "app").sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        TokenCodec([NEW_KEY], "app").verify(old_token, now=NOW)


# ----------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "token",
    [None, 42, 1.5, b"s1.a.b.c", bytearray(b"s1"), ["s1", "a", "b", "c"], object()],
    ids=lambda value: type(value).__name__,
)
def test_non_string_token_is_invalid(codec: TokenCodec, token: object) -> None:
    with pytest.raises(InvalidTokenError):
        codec.verify(token, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "...",
        "s1",
        "s1.a.b",
        "s1.a.b.c.d",
        "s2.a.b.c",
        "S1.a.b.c",
        "x" * (MAX_TOKEN_LENGTH + 1),
        "s1." + "a" * 5000 + ".b.c",
        "s1.\ud800.b.c",
        "🙂🙂🙂",
        "s1.a.b.c\n",
    ],
    ids=lambda value: repr(value)[:20],
)
def test_malformed_token_is_invalid(codec: TokenCodec, token: str) -> None:
    with pytest.raises(InvalidTokenError):
        codec.verify(token, now=NOW)


def test_token_with_its_own_parts_in_wrong_count_is_invalid(codec: TokenCodec) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        codec.verify(token + ".extra", now=NOW)
    with pytest.raises(InvalidTokenError):
        codec.verify(token.rsplit(".", 1)[0], now=NOW)


@pytest.mark.parametrize(
    "signature", ["!!!!", "a", "abcde", "é" * 43, "\ud800" * 43, "====", ""],
    ids=["punctuation", "one-char", "five-chars", "non-ascii", "surrogates", "padding", "empty"],
)
def test_signature_that_is_not_base64_is_invalid(codec: TokenCodec, signature: str) -> None:
    token = codec.sign("alice", now=NOW, ttl=TTL)
    with pytest.raises(InvalidTokenError):
        codec.verify(replace_part(token, 3, signature), now=NOW)


def test_forge_helper_builds_tokens_the_codec_accepts(codec: TokenCodec) -> None:
    # Guards the tests below: their tokens fail on the payload, not on the signature.
    token = forge_fields(OLD_KEY, ["app", "alice", 0, int((NOW + 60) * 1000), "nonce"])
    assert codec.verify(token, now=NOW) == TokenClaims("alice", "nonce", 0.0, NOW + 60)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        b64(b"\xc1"),  # a byte msgpack never uses
        b64(b"\x95"),  # an array header with no items
        b64(b"\x91" * 1400),  # deeply nested arrays
        b64(msgpack.packb(["app", "alice", 0, 10**15, "n"]) + b"\x00"),  # trailing data
        b64(b"\x95\xa3app\xa5alice\x00\xcf" + b"\xff" * 8 + b"\xa1\xff"),  # invalid UTF-8
        b64(b"\x81\x01\x02"),  # map with an int key
        "not base64 at all!",
        "a",  # one base64 character cannot be decoded
        "ünïcødé",
        "\ud800",
    ],
    ids=["empty", "reserved-byte", "truncated", "deep", "trailing", "bad-utf8", "int-key-map",
         "punctuation", "one-char", "non-ascii", "surrogate"],
)
def test_signed_payload_that_is_not_msgpack_is_invalid(codec: TokenCodec, payload: str) -> None:
    with pytest.raises(InvalidTokenError, match="payload"):
        codec.verify(forge(OLD_KEY, payload), now=NOW)


FAR = 10**15


@pytest.mark.parametrize(
    "fields",
    [
        None,
        42,
        "abcde",
        ["app", "alice", 0, FAR],
        ["app", "alice", 0, FAR, "n", "extra"],
        ["app", 5, 0, FAR, "n"],
        [b"app", "alice", 0, FAR, "n"],
        ["app", "alice", "0", FAR, "n"],
        ["app", "alice", 0, 1.5e15, "n"],
        ["app", "alice", 0, FAR, None],
        {"app": 1, "alice": 2, "x": 3, "y": 4, "z": 5},
    ],
    ids=lambda value: repr(value)[:30],
)
def test_signed_payload_of_the_wrong_shape_is_invalid(codec: TokenCodec, fields: object) -> None:
    with pytest.raises(InvalidTokenError, match="payload"):
        codec.verify(forge_fields(OLD_KEY, fields), now=NOW)


def test_the_client_a_token_claims_is_read_without_trusting_it() -> None:
    codec = TokenCodec([b"k" * 32], "ns")
    token = codec.sign("ann/tab-1", now=0.0, ttl=60.0)
    assert claimed_client_id(token) == "ann/tab-1"
    head, kid, payload, _ = token.split(".")
    assert claimed_client_id(f"{head}.{kid}.{payload}.forged") == "ann/tab-1"  # unverified
    numbers = base64.urlsafe_b64encode(msgpack.packb(["ns", 7, 0, 1, "n"])).decode().rstrip("=")
    short = base64.urlsafe_b64encode(msgpack.packb(["ns", "x"])).decode().rstrip("=")
    for bad in (None, 7, "", "s1", "s1.k.!!!.s", f"s1.k.{numbers}.s", f"s1.k.{short}.s",
                "x1.k.p.s", "s1." + "a" * MAX_TOKEN_LENGTH, "s1.k.\udc80.s"):
        assert claimed_client_id(bad) is None
