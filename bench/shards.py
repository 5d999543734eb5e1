"""How the masters of a Redis Cluster share the group traffic (issue 15, item 4).

Usage::

    python -m bench.shards --quick    # 30 groups, 3 s windows, one repetition
    python -m bench.shards            # 300 groups, 20 s windows, 3 repetitions
    python -m bench.shards --groups 300 --seconds 20 --repetitions 3 --scenarios history
    python -m bench.shards --stabilizer-path ../other-tree   # measure another tree's code
    python -m bench.shards --report bench/results/shards-full-<stamp>.json   # print again

It imports ``stabilizer`` from the import path, or from ``--stabilizer-path DIR`` (put first
on it: with ``python -m``, the current directory comes before PYTHONPATH), so it measures
any version of the key layout; the report names the folder and commit it imported.

Method. One real three-master Redis Cluster (``tests/support/redis_server.py``) serves every
run; each run flushes it first. Three replicas run as three ``WebSocketConnectionManager``
instances in this process, on one event loop, each with its own node id, Redis Cluster
client, connection pool and listener (``redis_cluster=True``): where a command lands
depends on its keys, not on which process sends it, so in-process replicas measure the
distribution as separate processes would, at a fraction of the set-up. Their sockets are
counting sinks (no network). ``groups`` busy groups ``busy-NNNN`` get ``members`` members
each (``member-NNNN-K``), connected to replica K mod 3 and joined there. Maintenance
(keepalive, session sweep, memory checks) is pushed out of the window (node_ttl and
memory_check_interval of an hour; heartbeats off). Then ``CONFIG RESETSTAT`` on every
master, the measured window, and ``INFO commandstats`` from every master right after it.

Scenarios, each ``seconds`` long, every replica issuing its share of ``rate`` operations
per second at a steady pace, each on a random group (seeded by repetition and replica):

* ``history``: ``send_to_group`` with history on (history_size > 0: the SEQUENCE script
  appends to the group's stream and SPUBLISHes from Lua);
* ``plain``: ``send_to_group`` with history off (one SPUBLISH on the group's channel);
* ``membership``: members joined with presence metadata; each operation is, in turn,
  ``update_presence`` or ``leave_group`` + ``join_group`` (with presence) of the replica's
  own member of the group.

Per master: the slots it serves, its share of all commands, of the data commands ("group
commands": everything but housekeeping, scripts' inner commands included; see
bench/shard_stats.py for the definition), of their execution time (usec), of the top-level
script calls, and of the publishes (``spublish`` + ``publish``), and its keys (DBSIZE, and a
SCAN count of the keys naming a group or a member). The goal of a layout that puts each
group in its own slot: each master's share 33% ± 10 points. Where each group lands is up
to its name's hash, so with equally busy groups chance alone moves a master's share by
about 100·sqrt((1/3)(2/3)/groups) points: 2.7 with 300 groups, 8.6 with the 30 of
``--quick`` (a smoke check, not a verdict). Figures are medians over the repetitions with
their range; every repetition goes to ``bench/results/shards-*.json``.

The benchmark's Redis servers are context-managed (stopped on exceptions, Ctrl-C and
SIGTERM); sending SIGKILL to the controller leaves them running.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench.core import RESULTS, Run, environment, guarded, log
from bench.harness import REPO, install_cleanup, stop_all
from bench.shard_stats import FULL, QUICK, SCENARIOS, Master, parse_cluster_nodes
from bench.shards_report import report
from tests.support.redis_server import RedisClusterServers


def topology(cluster: RedisClusterServers, namespace: str) -> tuple[list[Master], int]:
    """The masters, ordered by first slot, and the slot of the namespace's hash tag."""
    with redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port) as client:
        nodes = client.execute_command("CLUSTER", "NODES")
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", f"{{{namespace}}}"))
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    return parse_cluster_nodes(text), slot


def code_identity(root: Path) -> dict[str, Any]:
    """Where the measured stabilizer was imported from, and its git commit there (None
    outside a git work tree)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "stabilizer")
    return {"stabilizer_path": str(root), "stabilizer_commit": git("rev-parse", "--short", "HEAD"),
            "stabilizer_uncommitted": changed.splitlines() if changed else []}


def stored_report(path: Path) -> str:
    """The report of a results file written earlier (re-rendered with this code)."""
    data = json.loads(path.read_text())
    runs = [Run(**run) for run in data["runs"]]
    masters = [Master(m["port"], tuple((start, end) for start, end in m["slots"]))
               for m in data["masters"]]
    scenarios = list(dict.fromkeys(run.scenario for run in runs))
    plan = data["plan"]
    return report(runs, plan["groups"], scenarios, masters, data["namespace_slot"],
                  plan["namespace"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards",
                                     description=__doc__.split("\n\n", 1)[0] if __doc__
                                     else None)
    parser.add_argument("--quick", action="store_true", help="30 groups, 3 s, one repetition")
    parser.add_argument("--groups", type=int, help="busy groups (default 300, quick 30)")
    parser.add_argument("--seconds", type=float, help="measured window (default 20, quick 3)")
    parser.add_argument("--repetitions", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--rate", type=float, help="operations per second over the replicas "
                        "(default 300, quick 100)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"a subset of {','.join(SCENARIOS)}")
    parser.add_argument("--stabilizer-path", type=Path, metavar="DIR",
                        help="the folder holding the stabilizer/ to measure, put first on the "
                             "import path (default: the import path as it is)")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="print the report of a results file instead of measuring")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(stored_report(args.report))
        return 0
    plan = QUICK if args.quick else FULL
    changes = {"groups": args.groups, "seconds": args.seconds, "reps": args.repetitions,
               "rate": args.rate}
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if plan.groups < 1 or plan.seconds <= 0 or plan.reps < 1 or plan.rate <= 0:
        parser.error("groups, seconds, repetitions and rate must be positive")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown scenario: {unknown}")

    if args.stabilizer_path is not None:
        if not (args.stabilizer_path / "stabilizer" / "__init__.py").is_file():
            parser.error(f"{args.stabilizer_path} holds no stabilizer/__init__.py")
        sys.path.insert(0, str(args.stabilizer_path.resolve()))
    # imported only now: it imports stabilizer, from the path just set
    shard_run = importlib.import_module("bench.shards_run").shard_run
    stabilizer = sys.modules["stabilizer"]
    assert stabilizer.__file__ is not None

    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = {**environment(), **code_identity(Path(stabilizer.__file__).resolve().parent.parent)}
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    runs: list[Run] = []
    try:
        with RedisClusterServers(masters=3) as cluster:
            masters, ns_slot = topology(cluster, plan.namespace)
            log(f"masters: {[(m.port, m.label) for m in masters]}; {{{plan.namespace}}} is "
                f"slot {ns_slot}")
            for rep in range(plan.reps):
                for scenario in scenarios:
                    runs.append(guarded(partial(shard_run, scenario, plan, rep, cluster,
                                                masters), scenario, "stabilizer",
                                        plan.groups, rep))
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    text = report(runs, plan.groups, scenarios, masters, ns_slot, plan.namespace)
    out = RESULTS / f"shards-{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env, "plan": asdict(plan),
        "masters": [{"port": m.port, "slots": m.slots} for m in masters],
        "namespace_slot": ns_slot,
        "command": " ".join(["python -m bench.shards", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1), "runs": [asdict(r) for r in runs], "report": text,
    }, indent=1))
    commit = env["stabilizer_commit"] or "no git commit"
    dirty = " + uncommitted changes" if env["stabilizer_uncommitted"] else ""
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}; total "
          f"{elapsed:.0f}s\nstabilizer imported from {env['stabilizer_path']} ({commit}{dirty})\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
