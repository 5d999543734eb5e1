"""Shared helpers: client id checks, message encoding, close reasons, backoff, rate-limited log."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator

import pytest

from stabilizer.errors import (
    ConnectionNotFoundError,
    InvalidClientIdError,
    WebSocketStabilizerError,
)
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import default_node_id
from stabilizer.pure.text import (
    MAX_CLOSE_REASON_BYTES,
    backoff_delay,
    check_client_id,
    encode_message,
    is_usable_id,
    truncate_reason,
)

# ----------------------------------------------------------------------------- check_client_id


@pytest.mark.parametrize(
    "client_id", ["a", "alice", "a.b:c*d", "ünïcødé", "用户🙂", " ", "x" * 256, "\x00"]
)
def test_usable_client_id_is_returned(client_id: str) -> None:
    assert check_client_id(client_id, 256) == client_id


@pytest.mark.parametrize(
    "client_id",
    [None, 42, b"alice", ["alice"], "", "x" * 257, "\ud800", "ok\udfffok"],
    ids=["none", "int", "bytes", "list", "empty", "too-long", "lone-surrogate",
         "embedded-surrogate"],
)
def test_unusable_client_id_raises_invalid_client_id(client_id: object) -> None:
    with pytest.raises(InvalidClientIdError) as info:
        check_client_id(client_id, 256)
    assert isinstance(info.value, ConnectionNotFoundError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WebSocketStabilizerError)


def test_client_id_length_limit_counts_characters() -> None:
    assert check_client_id("é" * 10, 10) == "é" * 10
    with pytest.raises(InvalidClientIdError, match="11 characters"):
        check_client_id("é" * 11, 10)


def test_invalid_client_id_is_caught_by_the_seeds_except_clauses() -> None:
    with pytest.raises(ConnectionNotFoundError):
        check_client_id("", 256)


def test_a_usable_id_is_short_nonempty_text_that_utf8_encodes() -> None:
    assert is_usable_id("x", 3)
    assert is_usable_id("h\u00e9\U0001f600", 3)  # non-ASCII that UTF-8 encodes
    for unusable in (b"x", None, 7, ["x"], "", "xxxx", "\ud800", "a\udc80"):
        assert not is_usable_id(unusable, 3), unusable


def test_default_node_id_is_unique_per_call_and_short() -> None:
    ids = {default_node_id() for _ in range(50)}
    assert len(ids) > 1
    assert all(0 < len(node_id) <= 64 for node_id in ids)


# ----------------------------------------------------------------------------- encode_message


@pytest.mark.parametrize("message", ["", "hello", "ünïcødé 🙂", b"", b"\x00\xff"])
def test_text_and_bytes_pass_through_unchanged(message: str | bytes) -> None:
    assert encode_message(message) is message


@pytest.mark.parametrize("message", [bytearray(b"\x01\x02"), memoryview(b"\x01\x02")])
def test_bytes_like_becomes_bytes(message: bytearray | memoryview) -> None:
    assert encode_message(message) == b"\x01\x02"
    assert type(encode_message(message)) is bytes


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "two", None, True], '[1,"two",null,true]'),
        ((1, 2), "[1,2]"),
        ({}, "{}"),
        ([], "[]"),
        ({"text": "héllo 🙂"}, '{"text":"héllo 🙂"}'),
        ({"nested": {"k": [{"x": 1.5}]}}, '{"nested":{"k":[{"x":1.5}]}}'),
    ],
)
def test_json_values_become_compact_text(message: object, expected: str) -> None:
    encoded = encode_message(message)
    assert encoded == expected
    assert json.loads(encoded) == json.loads(expected)


@pytest.mark.parametrize(
    "message",
    [None, 42, 1.5, True, {1, 2}, object(), {"k": object()}, [b"bytes inside"],
     {("tuple", "key"): 1}],
    ids=["none", "int", "float", "bool", "set", "object", "dict-with-object", "list-with-bytes",
         "tuple-key"],
)
def test_other_values_raise_type_error(message: object) -> None:
    with pytest.raises(TypeError):
        encode_message(message)


def test_circular_value_raises_type_error() -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(TypeError):
        encode_message(cycle)


# ----------------------------------------------------------------------------- truncate_reason


@pytest.mark.parametrize("reason", ["", "bye", "x" * MAX_CLOSE_REASON_BYTES, "é" * 61 + "x"])
def test_short_reason_is_unchanged(reason: str) -> None:
    assert truncate_reason(reason) == reason


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("x" * 500, "x" * 123),
        ("é" * 100, "é" * 61),  # 122 bytes; the 62nd would need bytes 123-124
        ("x" + "é" * 100, "x" + "é" * 61),  # exactly 123 bytes
        ("€" * 50, "€" * 41),
        ("🙂" * 40, "🙂" * 30),
        ("ab" + "🙂" * 40, "ab" + "🙂" * 30),
    ],
    ids=["ascii", "two-byte", "two-byte-offset", "three-byte", "four-byte", "four-byte-offset"],
)
def test_long_reason_is_cut_to_123_bytes_on_a_character_boundary(
    reason: str, expected: str
) -> None:
    truncated = truncate_reason(reason)
    assert truncated == expected
    assert len(truncated.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    assert reason.startswith(truncated)


@pytest.mark.parametrize("length", range(115, 131))
@pytest.mark.parametrize("char", ["é", "€", "🙂"])
def test_truncated_reason_is_always_a_prefix_within_the_limit(length: int, char: str) -> None:
    reason = "x" * (length % 4) + char * length
    truncated = truncate_reason(reason)
    assert len(truncated.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    assert reason.startswith(truncated)
    assert len(truncated.encode("utf-8")) > MAX_CLOSE_REASON_BYTES - 4  # nothing cut needlessly


def test_truncated_reason_is_always_utf8_encodable() -> None:
    truncate_reason("bad \ud800 reason").encode("utf-8")


# ----------------------------------------------------------------------------- backoff_delay


@pytest.fixture
def seeded() -> Iterator[None]:
    state = random.getstate()
    random.seed(20240229)
    yield
    random.setstate(state)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("failures", "bound"), [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (6, 5.0), (100, 5.0)]
)
def test_backoff_is_full_jitter_below_the_exponential_bound(failures: int, bound: float) -> None:
    delays = [backoff_delay(failures) for _ in range(500)]
    assert all(0.0 <= delay <= bound for delay in delays)
    assert max(delays) > bound * 0.9  # the whole range is used
    assert min(delays) < bound * 0.1


@pytest.mark.usefixtures("seeded")
def test_backoff_respects_custom_base_and_cap() -> None:
    delays = [backoff_delay(10, base=1.0, cap=30.0) for _ in range(500)]
    assert all(0.0 <= delay <= 30.0 for delay in delays)
    assert max(delays) > 27.0
    assert all(0.0 <= backoff_delay(3, base=0.01, cap=30.0) <= 0.08 for _ in range(100))


def test_backoff_of_a_huge_failure_count_stays_capped() -> None:
    assert 0.0 <= backoff_delay(10**9) <= 5.0


# ----------------------------------------------------------------------------- RateLimitedLog


class FakeMonotonic:
    """Stands in for time.monotonic in stabilizer.logs (RateLimitedLog reads no clock argument)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_logs_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeMonotonic(100_000.0)
    monkeypatch.setattr("stabilizer.logs.time.monotonic", clock)
    log = RateLimitedLog(logging.getLogger("stabilizer.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="stabilizer.test"):
        for _ in range(5):
            log.warning("backend lost: %s", "reason")
            clock.now += 1.0
        clock.now = 100_010.0
        log.warning("backend lost: %s", "again")
        log.warning("backend lost: %s", "suppressed")
    assert [record.getMessage() for record in caplog.records] == [
        "backend lost: reason",
        "backend lost: again (4 similar suppressed)",
    ]


def test_rate_limited_log_logs_the_first_warning_on_a_freshly_booted_host(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stabilizer.logs.time.monotonic", lambda: 5.0)  # 5 s since boot
    log = RateLimitedLog(logging.getLogger("stabilizer.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="stabilizer.test"):
        log.warning("backend lost")
    assert [record.getMessage() for record in caplog.records] == ["backend lost"]
