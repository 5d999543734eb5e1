"""The report of ``bench.shards``: per scenario, one row per master with the median share
of each kind of command over the repetitions, their range, and the verdict against an
even spread (each master 33% ± 10 points)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Final

from bench.core import Run, report_tail, scenario_label, table
from bench.shard_stats import GOAL_TOLERANCE, Master, within_goal

TITLES: Final = {
    "history": "send_to_group, history on (the SEQUENCE script: XADD + SPUBLISH in Lua)",
    "plain": "send_to_group, history off (SPUBLISH on the group's channel)",
    "membership": "update_presence, and leave_group + join_group with presence, in turn",
}
#: (column, metric key) of the share columns.
SHARES: Final = (("% all commands", "all"), ("% group commands", "data"),
                 ("% group usec", "usec"), ("% scripts", "scripts"), ("% spublish", "publishes"))
#: The shares the verdict is given for.
JUDGED: Final = (("group commands", "data"), ("spublish", "publishes"))


def found(runs: Sequence[Run], key: str) -> list[float]:
    """`key` in every run that has it."""
    return [r.values[key] for r in runs if key in r.values]


def cell(values: Sequence[float], digits: int = 1) -> str:
    """The median, and the range (min to max) when the values differ (as shown)."""
    if not values:
        return "n/a"
    median = f"{statistics.median(values):,.{digits}f}"
    low, high = f"{min(values):,.{digits}f}", f"{max(values):,.{digits}f}"
    return median if low == high else f"{median} ({low}–{high})"


def verdict(runs: Sequence[Run], metric: str, masters: int) -> str:
    """How often every master's share of `metric` was within the goal, and the extremes."""
    goal = 100.0 / masters
    met = judged = 0
    shares: list[float] = []
    for run in runs:
        per_master = [run.values.get(f"m{index}_{metric}_pct") for index in range(masters)]
        outcome = within_goal(per_master, masters)
        if outcome is None:
            continue
        judged += 1
        met += outcome
        shares += [share for share in per_master if share is not None]
    if not judged:
        return "nothing of this kind ran"
    worst = max(abs(share - goal) for share in shares)
    return (f"per-master shares {min(shares):.1f}–{max(shares):.1f}% (largest deviation from "
            f"{goal:.1f}%: {worst:.1f} points); goal {goal:.0f}% ± {GOAL_TOLERANCE:.0f} each: "
            f"{'met' if met == judged else 'NOT met'} in {met} of {judged} repetition(s)")


def scenario_section(scenario: str, runs: Sequence[Run], masters: Sequence[Master],
                     ns_slot: int) -> str:
    rows, keys = [], []
    for index, master in enumerate(masters):
        name = f"#{index + 1} ({master.port})" + (" ns" if master.serves(ns_slot) else "")
        rows.append([name, f"{master.label} ({master.slot_count})",
                     *(cell(found(runs, f"m{index}_{key}_pct")) for _, key in SHARES)])
        keys.append([name, *(cell(found(runs, f"m{index}_{key}"), 0)
                             for key in ("dbsize", "group_keys", "member_keys"))])
    lines = [f"### {scenario}: {TITLES.get(scenario, scenario)}", ""]
    ops = [f"{cell(found(runs, 'operations'), 0)} operations in "
           f"{cell(found(runs, 'window_s'))} s ({cell(found(runs, 'rate'), 0)}/s)"]
    for key in ("sends", "joins", "leaves", "updates", "failed"):
        if any(found(runs, key)):
            ops.append(f"{key} {cell(found(runs, key), 0)}")
    data = [sum(r.values.get(f"m{i}_data_n", 0.0) for i in range(len(masters))) for r in runs]
    per_op = [total / r.values["operations"] for total, r in zip(data, runs, strict=True)
              if r.values.get("operations")]
    ops.append(f"group commands {cell(data, 0)} ({cell(per_op)} per operation)")
    if found(runs, "expected"):
        ops.append(f"frames delivered {cell(found(runs, 'delivered'), 0)} of "
                   f"{cell(found(runs, 'expected'), 0)}")
    lines += ["; ".join(ops) + ".", ""]
    lines.append(table(["master (port)", "slots", *(c for c, _ in SHARES)], rows))
    lines.append("")
    lines += [f"- {label}: {verdict(runs, key, len(masters))}" for label, key in JUDGED]
    lines += ["", "Keys per master after the window (DBSIZE; SCAN counts of the keys naming "
              "a group, and of those naming a member):", ""]
    lines.append(table(["master (port)", "keys", "group keys", "member keys"], keys))
    return "\n".join(lines)


def chance_points(groups: int, masters: int) -> float:
    """The standard deviation, in points, of one master's share of `groups` equally busy
    groups that each land on a master at random (binomial)."""
    p = 1.0 / masters
    return 100.0 * math.sqrt(p * (1.0 - p) / groups)


def report(runs: Sequence[Run], groups: int, scenarios: Sequence[str],
           masters: Sequence[Master], ns_slot: int, namespace: str) -> str:
    """The whole report: a section per scenario, then the machine's load and failures."""
    owner = next((i + 1 for i, m in enumerate(masters) if m.serves(ns_slot)), None)
    parts = [f"{len(masters)} masters, {groups} busy groups. The namespace's hash tag "
             f"{{{namespace}}} is slot {ns_slot}, served by master #{owner} (\"ns\"). "
             "Group commands: every executed command but housekeeping, commands run by "
             "scripts included; all commands: housekeeping too, the benchmark's own CONFIG "
             "RESETSTAT (one per master) included (definitions: bench/shard_stats.py). "
             "Figures: the median over the repetitions, and their range (min–max) where "
             "they differ. With groups placed in random slots, chance alone moves a "
             f"master's share by about {chance_points(groups, len(masters)):.1f} points (one "
             "standard deviation)."]
    for scenario in scenarios:
        done = [r for r in runs if r.scenario == scenario and r.error is None]
        if done:
            parts.append(scenario_section(scenario, done, masters, ns_slot))
    parts += report_tail(runs, label=scenario_label)
    return "\n\n".join(parts)
