"""bench.shards: reading CLUSTER NODES and INFO commandstats into per-master shares."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.core import Run
from bench.shard_stats import (
    Calls,
    command_calls,
    master_values,
    parse_cluster_nodes,
    shares,
    tally,
    within_goal,
)
from bench.shards import stored_report
from bench.shards_report import chance_points, verdict

NODES = (
    "07c3 127.0.0.1:30002@40002 master - 0 1426238317239 2 connected 5461-10922\n"
    "67ed 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-07c3]\n"
    "e7d1 127.0.0.1:30004@40004 slave 67ed 0 1426238316232 1 connected\n"
    "292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16382 16383\n"
    "824f 127.0.0.1:30005@40005 master,fail - 0 1426238316232 4 disconnected\n"
)


def stat(calls: int, usec: int) -> dict[str, float]:
    """One entry as redis-py's info("commandstats") gives it."""
    return {"calls": calls, "usec": usec, "usec_per_call": usec / calls,
            "rejected_calls": 0, "failed_calls": 0}


def test_masters_are_the_nodes_serving_slots_in_slot_order() -> None:
    masters = parse_cluster_nodes(NODES)

    assert [m.port for m in masters] == [30001, 30002, 30003]
    assert masters[0].slots == ((0, 5460),)  # the migrating marker is not a range
    assert masters[2].slots == ((10923, 16382), (16383, 16383))
    assert [m.slot_count for m in masters] == [5461, 5462, 5461]
    assert masters[2].label == "10923-16382,16383-16383"
    assert masters[1].serves(5461)
    assert not masters[0].serves(5461)


def test_a_script_counts_once_as_a_script_and_its_inner_commands_as_group_commands() -> None:
    info = {
        "cmdstat_evalsha": stat(10, 500),  # ten SEQUENCE scripts ...
        "cmdstat_hincrby": stat(10, 30),  # ... and what they ran
        "cmdstat_xadd": stat(10, 80),
        "cmdstat_spublish": stat(12, 40),  # two more sent by a client
        "cmdstat_config|resetstat": stat(1, 20),  # housekeeping from here on
        "cmdstat_cluster|slots": stat(2, 10),
        "cmdstat_ssubscribe": stat(3, 9),
        "cmdstat_ping": stat(4, 4),
        "cmdstat_script|load": stat(1, 50),
        "errorstat_NOSCRIPT": {"count": 1},
    }

    calls = command_calls(info)
    totals = tally(calls)

    assert calls["config|resetstat"] == Calls(1, 20)
    assert "errorstat_NOSCRIPT" not in calls
    assert totals.commands == 10 + 10 + 10 + 12 + 1 + 2 + 3 + 4 + 1
    assert totals.data == 42
    assert totals.data_usec == 650
    assert totals.scripts == 10
    assert totals.publishes == 12


def test_an_idle_master_has_zero_shares_and_nothing_at_all_has_none() -> None:
    busy = tally(command_calls({"cmdstat_evalsha": stat(3, 9), "cmdstat_publish": stat(3, 3)}))
    idle = tally(command_calls({"cmdstat_config|resetstat": stat(1, 5)}))

    assert shares([busy.data, idle.data, idle.data]) == [100.0, 0.0, 0.0]
    assert shares([idle.scripts, idle.scripts]) == [None, None]
    assert shares([1, 1, 2]) == [25.0, 25.0, 50.0]


@pytest.mark.parametrize(("per_master", "expected"), [
    ([33.3, 33.3, 33.4], True),
    ([23.4, 43.2, 33.4], True),
    ([23.2, 43.4, 33.4], False),
    ([100.0, 0.0, 0.0], False),
    ([None, None, None], None),
])
def test_the_goal_is_each_master_within_ten_points_of_a_third(
        per_master: list[float | None], expected: bool | None) -> None:
    assert within_goal(per_master) is expected


def test_the_verdict_counts_the_repetitions_that_met_the_goal() -> None:
    even = Run("history", "stabilizer", 300, 0,
               values={"m0_data_pct": 30.0, "m1_data_pct": 35.0, "m2_data_pct": 35.0})
    lopsided = Run("history", "stabilizer", 300, 1,
                   values={"m0_data_pct": 100.0, "m1_data_pct": 0.0, "m2_data_pct": 0.0})

    assert "met in 1 of 1" in verdict([even], "data", 3)
    text = verdict([even, lopsided], "data", 3)
    assert "NOT met in 1 of 2" in text
    assert "0.0–100.0%" in text
    assert verdict([even], "publishes", 3) == "nothing of this kind ran"


def test_each_master_gets_its_counts_and_shares_in_slot_order() -> None:
    busy = command_calls({"cmdstat_evalsha": stat(3, 30), "cmdstat_xadd": stat(3, 9),
                          "cmdstat_spublish": stat(3, 6), "cmdstat_ping": stat(1, 1)})
    light = command_calls({"cmdstat_evalsha": stat(1, 10), "cmdstat_xadd": stat(1, 3),
                           "cmdstat_spublish": stat(1, 2)})
    idle = command_calls({"cmdstat_config|resetstat": stat(1, 5)})

    values = master_values([busy, light, idle])

    assert values["m0_data_n"] == 9
    assert values["m0_data_pct"] == 75.0
    assert values["m1_data_pct"] == 25.0
    assert values["m2_data_pct"] == 0.0
    assert values["m0_usec_pct"] == 75.0
    assert values["m0_all_n"] == 10
    assert values["m2_all_n"] == 1
    assert values["m1_scripts_pct"] == 25.0
    assert values["m0_publishes_pct"] == 75.0
    assert "m0_scripts_pct" in values
    no_scripts = master_values([idle, idle, idle])
    assert "m0_scripts_pct" not in no_scripts  # nothing ran: no share, not 0%
    assert no_scripts["m0_scripts_n"] == 0


def test_chance_alone_spreads_thirty_groups_three_times_wider_than_three_hundred() -> None:
    assert chance_points(300, 3) == pytest.approx(2.72, abs=0.01)
    assert chance_points(30, 3) == pytest.approx(8.61, abs=0.01)


def test_a_stored_results_file_renders_its_report_again(tmp_path: Path) -> None:
    run = Run("plain", "stabilizer", 300, 0, values={
        "operations": 10.0, "m0_data_n": 10.0, "m1_data_n": 0.0,
        "m0_data_pct": 100.0, "m1_data_pct": 0.0, "m0_publishes_pct": 100.0,
        "m1_publishes_pct": 0.0, "m0_group_keys": 300.0, "m1_group_keys": 0.0})
    stored = {"runs": [asdict(run)], "namespace_slot": 2933,
              "masters": [{"port": 7000, "slots": [[0, 8191]]},
                          {"port": 7001, "slots": [[8192, 16383]]}],
              "plan": {"groups": 300, "namespace": "bench"}}
    path = tmp_path / "shards.json"
    path.write_text(json.dumps(stored))

    text = stored_report(path)

    assert "| #1 (7000) ns | 0-8191 (8192) | n/a | 100.0 |" in text
    assert "goal 50% ± 10 each: NOT met in 0 of 1" in text
    assert "| #1 (7000) ns | n/a | 300 | n/a |" in text
