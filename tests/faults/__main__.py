"""The randomized fault checker's command line.

    python -m tests.faults --seed 1234              # replay one seed (its schedule is fixed)
    python -m tests.faults --seeds 50 --minutes 30  # a campaign: random seeds, until either
                                                    # bound, then a summary

Every run prints its seed and, when it breaks an invariant, the violations, the replay
command and the folder holding its history and replica logs. Exit status 1 when any
schedule found a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from tests.faults.checker import kind_of
from tests.faults.runner import RunResult, run_schedule
from tests.faults.schedule import DEFAULT_OPS, generate


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="replay this seed")
    which.add_argument("--seeds", type=int, help="run up to this many random seeds")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="stop starting new schedules after this long (with --seeds)")
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS,
                        help=f"operations per schedule (default {DEFAULT_OPS})")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every operation")
    parser.add_argument("--summary", type=Path, help="also write the summary here as JSON")
    return parser.parse_args(argv)


def replay_command(seed: int, ops: int) -> str:
    """The command that replays `seed`."""
    extra = "" if ops == DEFAULT_OPS else f" --ops {ops}"
    return f"python -m tests.faults --seed {seed}{extra}"


async def _campaign(args: argparse.Namespace) -> list[RunResult]:
    seeds = [args.seed] if args.seed is not None else None
    chooser = random.SystemRandom()
    deadline = time.monotonic() + args.minutes * 60
    results: list[RunResult] = []
    quiet = not args.verbose

    def log(line: str) -> None:
        if not quiet or not line.startswith("  "):
            print(line, flush=True)

    while True:
        if seeds is not None:
            if not seeds:
                break
            seed = seeds.pop()
        elif len(results) >= args.seeds or time.monotonic() > deadline:
            break
        else:
            seed = chooser.randrange(1, 2**31)
        print(f"--- seed {seed} ({replay_command(seed, args.ops)})", flush=True)
        result = await run_schedule(generate(seed, args.ops), log=log)
        results.append(result)
        _report(result, args.ops)
    return results


def _report(result: RunResult, ops: int) -> None:
    verdict = "ok" if not result.violations else f"{len(result.violations)} VIOLATIONS"
    print(f"seed {result.seed}: {verdict} ({result.operations} operations, {result.faults} "
          f"faults, history {'on' if result.history else 'off'}, {result.seconds:.0f}s)",
          flush=True)
    for line in result.violations:
        print(f"  VIOLATION: {line}", flush=True)
    if result.violations:
        print(f"  replay: {replay_command(result.seed, ops)}; history and logs in "
              f"{result.kept}", flush=True)


def summarize(results: list[RunResult], seconds: float) -> dict[str, object]:
    """Totals of a campaign."""
    counts: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for result in results:
        for name, count in result.counts.items():
            counts[name] = counts.get(name, 0) + count
        for violation in result.violations:
            kinds[kind_of(violation)] = kinds.get(kind_of(violation), 0) + 1
    return {
        "schedules": len(results),
        "operations": sum(r.operations for r in results),
        "faults": sum(r.faults for r in results),
        "violations": sum(len(r.violations) for r in results),
        "violations_by_invariant": dict(sorted(kinds.items())),
        "failing_seeds": {str(r.seed): sorted({kind_of(v) for v in r.violations})
                          for r in results if r.violations},
        "history_on": sum(1 for r in results if r.history),
        "minutes": round(seconds / 60, 1),
        "operations_by_kind": dict(sorted(counts.items())),
        "code": sorted({r.code for r in results}),
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the summary, return the exit status."""
    args = _arguments(argv)
    started = time.monotonic()
    results = asyncio.run(_campaign(args))
    summary = summarize(results, time.monotonic() - started)
    print("=== summary: " + json.dumps(summary, indent=1), flush=True)
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
