"""``python -m bench.identity``: users and authentication (issue 11), one run, one report.

Usage::

    python -m bench.identity --quick     # small counts, one repetition: a smoke check
    python -m bench.identity             # full run: 3 repetitions, medians
    python -m bench.identity --scenarios connect --backends embedded,redis --reps 5

Scenarios: ``connect`` (bench/identity/connect.py) and ``user`` (bench/identity/users.py).
Every repetition of every contender starts its own processes; the contenders' order
rotates between repetitions. Ratios are to raw measured in the same run; figures are
medians over the repetitions, with their range; every repetition goes to the JSON file
(``bench/results/identity-*.json``), the logs next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Final

from bench._common import raise_nofile_limit
from bench.core import (
    RESULTS,
    Run,
    describe_code,
    environment,
    guarded,
    log,
    report_tail,
    rotated,
    scenario_label,
    snapshot_stabilizer,
)
from bench.harness import REPO, install_cleanup, stop_all
from bench.identity import connect, users
from bench.identity.common import FULL, QUICK, Plan

SCENARIOS: Final = ("connect", "user")


def run_all(plan: Plan, cons: Sequence[connect.Contender], scenarios: Sequence[str],
            keys: connect.Keys, log_dir: Path) -> list[Run]:
    runs: list[Run] = []
    for rep in range(plan.reps):
        if "connect" in scenarios:
            shift = rep % len(cons)  # as core.rotated: drift favours no contender
            for c in [*cons[shift:], *cons[:shift]]:
                runs.append(guarded(partial(connect.connect_run, c, plan, keys, rep, log_dir),
                                    "connect", c.label, plan.connect_clients, rep))
        if "user" in scenarios:
            for kind in rotated(users.KINDS, rep):
                runs.append(guarded(partial(users.user_run, kind, plan, keys, rep, log_dir),
                                    "user", kind, plan.users, rep))
    return runs


def report(runs: list[Run], plan: Plan, cons: Sequence[connect.Contender],
           scenarios: Sequence[str]) -> str:
    parts: list[str] = []
    if "connect" in scenarios:
        parts += connect.connect_report(runs, plan, cons)
    if "user" in scenarios:
        parts += users.user_report(runs, plan, users.KINDS)
    parts += report_tail(runs, label=scenario_label)
    return "\n\n".join(parts)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--servers", default=",".join(connect.KINDS),
                        help="connect: comma-separated subset of "
                             f"{','.join(connect.KINDS)} (raw is always measured)")
    parser.add_argument("--backends", default="embedded",
                        help="connect: the stabilizer's backends, embedded and/or redis "
                             "(default: embedded)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait for other benchmarks or test runs to end "
                             "before each measurement (default 1800; then measure anyway)")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)
    if args.max_wait is not None:
        plan = replace(plan, max_wait=args.max_wait)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.servers = ["raw", *[k.strip() for k in args.servers.split(",")
                             if k.strip() not in ("", "raw")]]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = ([s for s in args.scenarios if s not in SCENARIOS]
               + [k for k in args.servers if k not in connect.KINDS]
               + [b for b in args.backends if b not in connect.BACKENDS])
    if unknown:
        parser.error(f"unknown scenario, server or backend: {unknown}")
    return args, plan


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = parse(argv)
    scenarios: list[str] = args.scenarios
    cons = connect.contenders(args.servers, args.backends)

    raise_nofile_limit()
    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-identity-{stamp}"
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), "redis-py": _version("redis"),
           "PyJWT": _version("PyJWT"), "cryptography": _version("cryptography")}
    plan = replace(plan, stabilizer_path=str(snapshot))
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    modes = {c.auth for c in cons} | ({"hs256"} if "user" in scenarios else set())
    count = max(plan.latency_connects, plan.connect_clients, plan.users, plan.warmup_clients)
    keys = connect.make_keys(count, log_dir / "keys", sorted(modes - {"none"}))
    log(f"signed {count} tokens for {', '.join(sorted(keys.tokens))} in "
        f"{time.monotonic() - started:.1f}s (before any measurement)")
    try:
        runs = run_all(plan, cons, scenarios, keys, log_dir)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan, cons, scenarios)
    out = args.out or RESULTS / f"identity-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "command": " ".join(["python -m bench.identity", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, uvicorn "
          f"{env['uvicorn']}, redis-py {env['redis-py']}, PyJWT {env['PyJWT']}, cryptography "
          f"{env['cryptography']}; total {elapsed:.0f}s\n{describe_code(env)}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
