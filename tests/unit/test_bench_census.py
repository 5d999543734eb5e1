"""bench.census: the promotion count the reconnect storm's --census reports."""

from __future__ import annotations

import gc

from bench.census import Promotions, largest_differences, per_connect


class Kept:
    """A type of our own, to find in the counts."""


def test_a_collection_of_generation_one_counts_the_young_objects_it_promotes() -> None:
    promotions = Promotions()
    gc.collect()  # (the old objects out of the young generations)
    gc.callbacks.append(promotions)
    try:
        kept = [Kept() for _ in range(50)]
        gc.collect(1)
    finally:
        gc.callbacks.remove(promotions)
    assert promotions.collections == 1
    assert promotions.types["Kept"] == 50
    assert len(kept) == 50


def test_a_collection_of_generation_zero_promotes_nothing() -> None:
    promotions = Promotions()
    gc.callbacks.append(promotions)
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(promotions)
    assert promotions.collections == 0
    assert not promotions.types


def test_per_connect_divides_the_growth_between_two_readings() -> None:
    before = {"collections": 1, "types": {"coroutine": 10, "dict": 4}}
    after = {"collections": 3, "types": {"coroutine": 310, "dict": 4, "Session": 100}}
    assert per_connect(before, after, 100) == {"coroutine": 3.0, "Session": 1.0}


def test_the_largest_differences_from_the_base_come_first() -> None:
    rows = largest_differences({"raw": {"list": 26.0, "cell": 17.0},
                                "stabilizer": {"list": 27.0, "cell": 17.0, "Session": 1.0,
                                               "coroutine": 5.0}}, "raw", top=3)
    assert rows == [("coroutine", [0.0, 5.0]), ("Session", [0.0, 1.0]),
                    ("list", [26.0, 27.0])]  # (a tie goes by name)
