"""The order a node over its memory limit evicts in (pure/eviction.py)."""

from __future__ import annotations

import itertools

from stabilizer.pure.eviction import SIGNIFICANT_SHARE, eviction_order


def test_alike_holdings_keep_the_policys_order() -> None:
    holdings = [("a", 600), ("b", 610), ("c", 590), ("d", 2000)]
    assert list(eviction_order(holdings)) == ["a", "b", "c", "d"]


def test_a_big_holder_goes_before_those_that_would_free_a_negligible_share() -> None:
    holdings = [(f"good{n}", 600) for n in range(5)] + [("hog", 499_000)]
    assert next(eviction_order(holdings)) == "hog"
    assert list(eviction_order(holdings)) == ["hog"] + [f"good{n}" for n in range(5)]


def test_the_bar_falls_as_the_big_holders_go() -> None:
    holdings = [("idle", 600), ("slow", 20_000), ("tiny", 0), ("hog", 400_000),
                ("slower", 15_000)]
    # the slow readers hold under 1/16 of the hog, so it goes first; then they go (each
    # over 1/16 of 20 000) before the idle ones
    assert list(eviction_order(holdings)) == ["hog", "slow", "slower", "idle", "tiny"]


def test_a_holder_at_exactly_the_share_is_eligible() -> None:
    holdings = [("small", 1000), ("big", 1000 * SIGNIFICANT_SHARE)]
    assert list(eviction_order(holdings)) == ["small", "big"]


def test_every_candidate_is_yielded_once_and_nothing_of_an_empty_pool() -> None:
    sizes = [0, 1, 15, 16, 17, 255, 256, 4096, 70_000]
    for perm in itertools.permutations(sizes[:6]):
        order = list(eviction_order(list(enumerate(perm))))
        assert sorted(order) == list(range(6))
    assert list(eviction_order([])) == []
