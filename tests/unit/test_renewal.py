"""When the server asks a v2 connection for fresh credentials, and which refresh frames it
checks (pure: the clock is an argument)."""

from __future__ import annotations

import itertools

from stabilizer.pure.renewal import Renewal

GRACE = 10.0


def test_the_first_request_goes_out_grace_seconds_before_the_expiry() -> None:
    assert Renewal(GRACE).ask_at(1000.0) == 990.0
    assert Renewal(GRACE).ask_at(5.0) == -5.0  # already within the grace: at once


def test_credentials_no_fresher_than_those_asked_about_are_not_asked_for_again() -> None:
    """A get_token that reuses a cached token answers with the credentials it was asked
    about: asking again at once made a loop until they expired."""
    renewal = Renewal(GRACE)
    renewal.asked(1000.0, now=990.0)
    assert renewal.ask_at(1000.0) is None
    assert renewal.ask_at(999.0) is None
    assert renewal.ask_at(1600.0) == 1590.0


def test_requests_are_spaced_by_half_the_grace() -> None:
    """Tokens that live less than the grace, or a server clock ahead of the issuer's: each
    refresh still expires within the grace, and each used to be asked about at once."""
    renewal = Renewal(GRACE)
    now, expires_at, asks = 0.0, 7.0, []
    while now < 60.0:
        ask = renewal.ask_at(expires_at)
        assert ask is not None
        now = max(now, ask)
        renewal.asked(expires_at, now)
        asks.append(now)
        expires_at = now + 8.0  # the client answers at once with another 8-second token
    assert [later - earlier for earlier, later in itertools.pairwise(asks)] == [
        GRACE / 2] * (len(asks) - 1)
    skewed = Renewal(GRACE)  # credentials the server sees as expired 30 s ago
    skewed.asked(-30.0, now=0.0)
    assert skewed.ask_at(-29.0) == GRACE / 2


def test_an_answer_to_a_request_is_checked_and_other_refreshes_once_per_half_grace() -> None:
    renewal = Renewal(GRACE)
    assert renewal.take(0.0)  # unasked, the first one
    assert not renewal.take(1.0)
    assert not renewal.take(4.9)
    renewal.asked(20.0, now=5.0)
    assert renewal.take(5.0)  # the answer
    assert not renewal.take(5.1)  # a second answer to the same request
    assert renewal.take(10.0)
    assert not renewal.take(14.9)


def test_a_refresh_that_could_not_be_checked_is_asked_for_again_half_a_grace_later() -> None:
    renewal = Renewal(10.0)
    assert renewal.retry_at(expires_at=100.0, now=92.0) == 97.0


def test_no_retry_is_asked_for_at_or_after_the_close() -> None:
    renewal = Renewal(10.0)
    assert renewal.retry_at(expires_at=100.0, now=104.0) == 109.0  # before the close at 110
    assert renewal.retry_at(expires_at=100.0, now=105.0) is None
