"""The inbound rate limit's rule for heartbeats (pure/rate.py), with the clock an argument:
the pong answering each ping sent is free, one heartbeat of the client's own per interval
is free, and any other spends a token."""

from __future__ import annotations

from collections.abc import Callable

from stabilizer import WebSocketConfig
from stabilizer.pure.rate import TokenBucket


def _taken(take: Callable[[float], bool], times: int, now: float = 100.0) -> list[bool]:
    return [take(now) for _ in range(times)]


def test_no_limit_makes_no_bucket() -> None:
    assert TokenBucket.from_config(WebSocketConfig()) is None


def test_a_pong_per_ping_sent_is_free_and_spends_no_token() -> None:
    bucket = TokenBucket(2, 60.0, beat_interval=30.0)
    for _ in range(5):
        bucket.pinged()
    assert _taken(bucket.take_pong, 5) == [True] * 5
    assert bucket.tokens == 2.0  # untouched: the messages keep their whole limit
    assert _taken(bucket.take, 3) == [True, True, False]


def test_pongs_beyond_the_pings_sent_spend_tokens() -> None:
    bucket = TokenBucket(2, 60.0, beat_interval=30.0)
    bucket.pinged()
    # the ping's pong, the interval's free heartbeat, then the two tokens; then nothing
    assert _taken(bucket.take_pong, 6) == [True, True, True, True, False, False]


def test_one_heartbeat_of_its_own_per_interval_is_free() -> None:
    bucket = TokenBucket(1, 3600.0, beat_interval=30.0)
    assert _taken(bucket.take_beat, 3, now=100.0) == [True, True, False]  # free, a token
    assert bucket.take_beat(129.0) is False  # within the interval: no token left
    assert bucket.take_beat(130.0) is True  # the next interval's free one
    assert bucket.take_pong(131.0) is False  # a pong nothing asked for is such a heartbeat


def test_tokens_refill_over_the_window() -> None:
    bucket = TokenBucket(2, 10.0)
    assert _taken(bucket.take, 3, now=0.0) == [True, True, False]
    assert bucket.take(5.0) is True  # one token back after half a window
    assert bucket.take(5.0) is False


def test_the_configured_heartbeat_interval_spaces_the_free_heartbeats() -> None:
    config = WebSocketConfig(rate_limit_messages=1, heartbeat_interval=12.0)
    bucket = TokenBucket.from_config(config)
    assert bucket is not None
    assert (bucket.capacity, bucket.beat_interval) == (1.0, 12.0)
