"""The watch view's pure core: rates between two polls, on the Redis clock."""

from __future__ import annotations

from stabilizer.cli.watch import Sample, frame, render


def test_the_first_frame_has_counts_but_no_rates() -> None:
    shown = frame(None, Sample(10_000.0, {"a": (3, 19_000.0)}, None), node_ttl=10.0)

    assert shown["nodes"] == [{"node_id": "a", "clients": 3, "connections_per_s": None,
                               "last_seen_s": 1.0}]
    assert (shown["connections"], shown["connections_per_s"], shown["seconds"]) == (3, None,
                                                                                    None)
    assert (shown["joined"], shown["left"]) == ([], [])


def test_rates_are_changes_over_the_seconds_between_polls() -> None:
    before = Sample(10_000.0, {"a": (3, 20_000.0), "gone": (5, 20_000.0)}, 100)
    after = Sample(12_000.0, {"a": (7, 22_000.0), "new": (1, 22_000.0)}, 110)

    shown = frame(before, after, node_ttl=10.0)

    assert shown["seconds"] == 2.0
    assert {n["node_id"]: n["connections_per_s"] for n in shown["nodes"]} == {"a": 2.0,
                                                                              "new": None}
    assert shown["connections_per_s"] == (8 - 8) / 2.0
    assert shown["broadcasts_per_s"] == 5.0
    assert (shown["joined"], shown["left"]) == (["new"], ["gone"])
    text = render(shown, "chat", 2.0)
    assert "joined: new" in text
    assert "left: gone" in text
    assert "broadcasts/s +5.0" in text


def test_without_history_there_is_no_broadcast_rate() -> None:
    before, after = Sample(0.0, {}, None), Sample(1_000.0, {}, None)

    assert frame(before, after, node_ttl=10.0)["broadcasts_per_s"] is None
