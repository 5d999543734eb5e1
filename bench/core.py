"""Side-by-side benchmark of raw FastAPI sockets, fastapi-websocket-stabilizer and stabilizer.

Usage::

    python -m bench.core --quick     # small counts, one repetition: a smoke check (< 2 min)
    python -m bench.core             # full run: 3 repetitions, medians (< 15 min)
    python -m bench.core --servers raw,stabilizer --baseline 13bff3a   # before/after

``--baseline REV`` adds a contender ``stabilizer@<short REV>``: the same server app as
``stabilizer`` (same code in bench/servers.py, same config overrides), importing the
``stabilizer/`` folder of git revision REV, exported with ``git archive`` to
bench/results/baseline-<short REV>-<stamp>/. The ``stabilizer`` contender is the work tree
(copied to bench/results/snapshot-<stamp>/ at the start). The baseline takes part in every
scenario the stabilizer takes part in, in the same rotation of order between repetitions,
appears in every table next to it, and the report ends with a before/after table
(stabilizer / baseline). The JSON results record the revision (``environment.baseline``).

Scenarios (each run starts a fresh server process and fresh load generators):

* fan-out: K broadcasts of one 64-byte text message to N idle clients (N = 1,000 and
  5,000), heartbeat off. Server CPU time (user + system, from psutil) is read before the
  broadcast request and after the load generators have counted every delivery (or a
  timeout passed: the shortfall is reported as loss).
* memory: in the 5,000-client fan-out run, before any broadcast: (RSS with 5,000 clients -
  RSS with 0 clients after a warm-up) / 5,000, gc.collect() before both readings.
* heartbeat: 5,000 idle clients that answer every ping, heartbeat_interval=1s,
  heartbeat_timeout=10s; after the clients connected and a settling pause, server CPU and
  the pings counted at the clients over a fixed window.

Figures are medians over the repetitions. Raw results (every repetition) are written as
JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import psutil

from bench.harness import (
    REPO,
    BenchError,
    Fleet,
    ForeignLoad,
    Server,
    free_port,
    install_cleanup,
    stop_all,
)
from bench.servers import KINDS

RESULTS: Final = REPO / "bench" / "results"
HEARTBEAT_KINDS: Final = ("raw", "seed", "stabilizer")
SCENARIOS: Final = ("fanout", "heartbeat")
#: A baseline contender is labelled stabilizer@<short rev> and runs the stabilizer's app.
BASELINE_PREFIX: Final = "stabilizer@"


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    fanout: tuple[tuple[int, int], ...]  # (clients, broadcasts K)
    memory_clients: int  # the fan-out run with this many clients also measures memory
    message_size: int
    heartbeat_clients: int
    heartbeat_interval: float
    heartbeat_timeout: float
    heartbeat_settle: float
    heartbeat_window: float
    reps: int
    generators: int = 4
    warmup_clients: int = 20
    delivery_timeout: float = 120.0
    stabilizer_config: str | None = None  # JSON of extra WebSocketConfig fields
    stabilizer_path: str | None = None  # folder holding the snapshot of stabilizer/
    baseline_label: str | None = None  # stabilizer@<short rev>, with --baseline
    baseline_path: str | None = None  # folder holding the export of that revision


def app_kind(kind: str) -> str:
    """The server app of a contender: a baseline (stabilizer@REV) runs the stabilizer's."""
    return "stabilizer" if kind.startswith(BASELINE_PREFIX) else kind


def code_path(kind: str, stabilizer_path: str | None, baseline_label: str | None,
              baseline_path: str | None) -> str | None:
    """The folder a contender imports stabilizer from (None: the default import path)."""
    if kind == "stabilizer":
        return stabilizer_path
    if baseline_label is not None and kind == baseline_label:
        return baseline_path
    return None


def log_name(kind: str) -> str | None:
    """Distinguishes a baseline's server logs from the stabilizer's (server-stabilizer-
    baseline-<rev>-<port>.log)."""
    return f"baseline-{kind.removeprefix(BASELINE_PREFIX)}" if kind != app_kind(kind) else None


def server_args(kind: str, plan: Plan) -> list[str]:
    args: list[str] = []
    if app_kind(kind) == "stabilizer" and plan.stabilizer_config:
        args += ["--stabilizer-config", plan.stabilizer_config]
    path = code_path(kind, plan.stabilizer_path, plan.baseline_label, plan.baseline_path)
    if path:
        args += ["--stabilizer-path", path]
    return args


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def code_digest(dest: Path) -> str:
    """Hash of the files of dest/stabilizer/ (names and contents), as printed by the runs."""
    digest = hashlib.sha256()
    for path in sorted((dest / "stabilizer").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(dest).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_stabilizer(dest: Path) -> dict[str, Any]:
    """Copy stabilizer/ to `dest`, so every server of this run imports the same code even if
    the work tree changes meanwhile; return what identifies that code."""
    shutil.copytree(REPO / "stabilizer", dest / "stabilizer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return {
        "stabilizer_commit": _git("rev-parse", "--short", "HEAD"),
        "stabilizer_uncommitted": _git("status", "--porcelain", "--", "stabilizer").splitlines(),
        "stabilizer_sha256": code_digest(dest),
    }


def export_baseline(rev: str, stamp: str) -> dict[str, Any]:
    """Export stabilizer/ of git revision `rev` (``git archive``) to
    bench/results/baseline-<short rev>-<stamp>/; return what identifies it (label, path)."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit == "unknown":
        raise BenchError(f"--baseline: {rev!r} is not a git revision of {REPO}")
    short = _git("rev-parse", "--short", commit)
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "stabilizer"],
                                 cwd=REPO, capture_output=True, timeout=60, check=True).stdout
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if exc.stderr else str(exc)
        raise BenchError(f"--baseline: cannot export stabilizer/ at {rev!r}: {detail}"
                         ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"--baseline: cannot export stabilizer/ at {rev!r}: {exc}") from None
    dest = RESULTS / f"baseline-{short}-{stamp}"
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / "stabilizer" / "__init__.py").is_file():
        raise BenchError(f"revision {rev!r} has no stabilizer/__init__.py")
    return {
        "rev": rev,
        "commit": commit,
        "label": BASELINE_PREFIX + short,
        "subject": _git("log", "-1", "--format=%s", commit),
        "date": _git("log", "-1", "--format=%cI", commit),
        "path": str(dest),
        "sha256": code_digest(dest),
    }


def with_baseline(kinds: list[str], label: str) -> list[str]:
    """`kinds` with the baseline right after stabilizer (or last, without stabilizer)."""
    kinds = [k for k in kinds if k != label]
    at = kinds.index("stabilizer") + 1 if "stabilizer" in kinds else len(kinds)
    return [*kinds[:at], label, *kinds[at:]]


def describe_code(env: dict[str, Any]) -> str:
    """One line per stabilizer code measured: the work tree snapshot and the baseline."""
    dirty = " + uncommitted changes" if env.get("stabilizer_uncommitted") else ""
    lines = [f"stabilizer: work tree at {env['stabilizer_commit']}{dirty} "
             f"(sha256 {env['stabilizer_sha256']})"]
    base = env.get("baseline")
    if base:
        lines.append(f"{base['label']}: the same app importing stabilizer/ of commit "
                     f"{base['commit'][:12]} ({base['date'][:10]}, \"{base['subject'][:80]}\"; "
                     f"--baseline {base['rev']}; sha256 {base['sha256']})")
    lines.append(f"event loop: {env.get('loop', 'auto')} (uvloop "
                 f"{env.get('uvloop', 'not recorded')}; BENCH_LOOP chooses)")
    return "\n".join(lines)


def compare_table(label: str, items: Iterable[tuple[str, float | None, float | None, int]]
                  ) -> str:
    """Before/after: (metric, baseline value, stabilizer value, digits) per row."""
    rows = [[metric, fmt(before, digits), fmt(after, digits), ratio(after, before)]
            for metric, before, after, digits in items]
    return table(["metric", label, "stabilizer", f"stabilizer / {label}"], rows)


FULL: Final = Plan(
    fanout=((1000, 200), (5000, 40)),
    memory_clients=5000,
    message_size=64,
    heartbeat_clients=5000,
    heartbeat_interval=1.0,
    heartbeat_timeout=10.0,
    heartbeat_settle=5.0,
    heartbeat_window=20.0,
    reps=3,
)
QUICK: Final = Plan(
    fanout=((200, 100), (1000, 20)),
    memory_clients=1000,
    message_size=64,
    heartbeat_clients=1000,
    heartbeat_interval=1.0,
    heartbeat_timeout=10.0,
    heartbeat_settle=2.0,
    heartbeat_window=5.0,
    reps=1,
    delivery_timeout=30.0,
)


@dataclass
class Run:
    """One measurement of one server in one scenario."""

    scenario: str
    kind: str
    clients: int
    rep: int
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mode_of(kind: str) -> str:
    return "sio" if kind == "socketio" else "ws"


# --------------------------------------------------------------------------- scenarios


def wait_for(fleet: Fleet, key: str, expected: int, timeout: float,
             poll: float = 0.01) -> dict[str, Any]:
    """Poll the generators until counter `key` reaches `expected` or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        stats = fleet.stats(light=True)
        if stats[key] >= expected or time.monotonic() > deadline:
            return stats
        time.sleep(poll)


def warm_up(server: Server, fleet: Fleet, plan: Plan, mode: str) -> None:
    """Connect a few clients, broadcast twice, disconnect them: code paths and imports warm."""
    before = fleet.stats(light=True)["bcast"]
    fleet.connect(server.port, plan.warmup_clients, mode=mode, prefix="w")
    if server.wait_count(plan.warmup_clients) != plan.warmup_clients:
        raise BenchError("warm-up clients not registered")
    server.request("POST", f"/bench/broadcast?k=2&size={plan.message_size}")
    wait_for(fleet, "bcast", before + 2 * plan.warmup_clients, 10.0)
    fleet.close()
    left = server.wait_count(0, timeout=30.0)
    if left:
        raise BenchError(f"{left} warm-up clients still registered after closing")


def fanout_run(kind: str, clients: int, broadcasts: int, plan: Plan, rep: int,
               log_dir: Path) -> Run:
    run = Run("fanout", kind, clients, rep)
    mode = mode_of(kind)
    port = free_port()
    with Server(app_kind(kind), port, log_dir, extra_args=server_args(kind, plan),
                name=log_name(kind)) as server, \
            Fleet(plan.generators, log_dir) as fleet:
        server.wait_ready()
        warm_up(server, fleet, plan, mode)
        server.request("POST", "/bench/gc")
        time.sleep(0.5)
        rss_empty = server.rss()
        cpu_before = server.cpu_seconds()
        opened = fleet.connect(port, clients, mode=mode)
        registered = server.wait_count(clients)
        if registered != clients:
            raise BenchError(f"server registered {registered} of {clients} clients")
        run.values["connect_us"] = (server.cpu_seconds() - cpu_before) / clients * 1e6
        run.notes["connect_seconds"] = round(opened["seconds"], 2)
        if clients == plan.memory_clients:
            server.request("POST", "/bench/gc")
            time.sleep(1.0)
            rss_full = server.rss()
            run.values["rss_empty_mb"] = rss_empty / 1e6
            run.values["rss_full_mb"] = rss_full / 1e6
            run.values["kb_per_conn"] = (rss_full - rss_empty) / clients / 1024

        # Priming broadcast (not measured): first use of the send path on every socket.
        base = fleet.stats(light=True)
        server.request("POST", f"/bench/broadcast?k=1&size={plan.message_size}")
        base = wait_for(fleet, "bcast", base["bcast"] + clients, plan.delivery_timeout)

        expected = base["bcast"] + clients * broadcasts
        foreign = ForeignLoad([server.pid, *fleet.pids])
        user_before, sys_before = server.cpu_split()
        started = time.monotonic()
        reply = server.request(
            "POST", f"/bench/broadcast?k={broadcasts}&size={plan.message_size}"
        )
        after = wait_for(fleet, "bcast", expected, plan.delivery_timeout)
        user_after, sys_after = server.cpu_split()
        wall = time.monotonic() - started

        delivered = after["bcast"] - base["bcast"]
        cpu = (user_after - user_before) + (sys_after - sys_before)
        run.values.update({
            "deliveries": delivered,
            "lost": clients * broadcasts - delivered,
            "cpu_s": cpu,
            "cpu_user_s": user_after - user_before,
            "cpu_sys_s": sys_after - sys_before,
            "wall_s": wall,
            "call_s": float(reply["seconds"]),
            "ms_per_1k": cpu / max(delivered, 1) * 1e6,  # CPU ms per 1,000 deliveries
            "other_frames": after["other"] - base["other"] + after["ping"] - base["ping"],
            "closed_by_server": after["closed"] - base["closed"],
            "foreign_pct": foreign.percent(),
        })
    return run


def heartbeat_run(kind: str, plan: Plan, rep: int, log_dir: Path) -> Run:
    clients = plan.heartbeat_clients
    run = Run("heartbeat", kind, clients, rep)
    port = free_port()
    with Server(app_kind(kind), port, log_dir, heartbeat_interval=plan.heartbeat_interval,
                heartbeat_timeout=plan.heartbeat_timeout,
                extra_args=server_args(kind, plan), name=log_name(kind)) as server, \
            Fleet(plan.generators, log_dir) as fleet:
        server.wait_ready()
        opened = fleet.connect(port, clients, mode=mode_of(kind))
        registered = server.wait_count(clients)
        if registered != clients:
            raise BenchError(f"server registered {registered} of {clients} clients")
        run.notes["connect_seconds"] = round(opened["seconds"], 2)
        time.sleep(plan.heartbeat_settle)

        fleet.mark()
        before = fleet.stats()
        foreign = ForeignLoad([server.pid, *fleet.pids])
        user_before, sys_before = server.cpu_split()
        started = time.monotonic()
        time.sleep(plan.heartbeat_window)
        after = fleet.stats()
        user_after, sys_after = server.cpu_split()
        wall = time.monotonic() - started
        foreign_pct = foreign.percent()
        still = server.count()

        pings = after["ping"] - before["ping"]
        cpu = (user_after - user_before) + (sys_after - sys_before)
        run.values.update({
            "cpu_pct": cpu / wall * 100,
            "pings": pings,
            "pings_per_conn_s": pings / clients / wall,
            "min_conn_pings_per_s": after["ping_min"] / wall,
            "max_conn_pings_per_s": after["ping_max"] / wall,
            "us_per_ping": cpu / max(pings, 1) * 1e6,
            "cpu_s": cpu,
            "cpu_user_s": user_after - user_before,
            "cpu_sys_s": sys_after - sys_before,
            "wall_s": wall,
            "closed_by_server": after["closed"] - before["closed"] + after["lost"]
            - before["lost"],
            "server_count_end": still,
            "other_frames": after["other"] - before["other"],
            "foreign_pct": foreign_pct,
        })
    return run


def guarded(make: Callable[[], Run], scenario: str, kind: str, clients: int, rep: int) -> Run:
    """Run one measurement; a failure is recorded (and shown) rather than ending the run."""
    label = f"{scenario} {kind} n={clients} rep {rep + 1}"
    log(f"{label} ...")
    try:
        run = make()
    except BenchError as exc:
        log(f"{label} FAILED: {exc}")
        return Run(scenario, kind, clients, rep, error=str(exc))
    except Exception as exc:  # an unexpected failure of one run must not lose the others
        traceback.print_exc()
        log(f"{label} FAILED: {exc!r}")
        return Run(scenario, kind, clients, rep, error=repr(exc))
    finally:
        stop_all()  # backstop: nothing of this run survives it
    shown = ", ".join(f"{k}={v:.4g}" for k, v in run.values.items())
    log(f"{label}: {shown}")
    return run


def rotated(kinds: Sequence[str], rep: int) -> list[str]:
    """Vary the order of servers between repetitions so drift does not favour one."""
    shift = rep % len(kinds)
    return list(kinds[shift:]) + list(kinds[:shift])


def run_all(plan: Plan, kinds: Sequence[str], scenarios: Sequence[str],
            log_dir: Path) -> list[Run]:
    runs: list[Run] = []
    for rep in range(plan.reps):
        if "fanout" in scenarios:
            for clients, broadcasts in plan.fanout:
                for kind in rotated(kinds, rep):
                    runs.append(guarded(
                        partial(fanout_run, kind, clients, broadcasts, plan, rep, log_dir),
                        "fanout", kind, clients, rep,
                    ))
        if "heartbeat" in scenarios:
            for kind in rotated([k for k in kinds if app_kind(k) in HEARTBEAT_KINDS], rep):
                runs.append(guarded(
                    partial(heartbeat_run, kind, plan, rep, log_dir),
                    "heartbeat", kind, plan.heartbeat_clients, rep,
                ))
    return runs


# --------------------------------------------------------------------------- report


def median_of(runs: Iterable[Run], scenario: str, kind: str, clients: int,
              key: str) -> float | None:
    values = [r.values[key] for r in runs
              if r.scenario == scenario and r.kind == kind and r.clients == clients
              and r.error is None and key in r.values]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{value / base:.2f}x"


def run_label(run: Run) -> str:
    """How a failed run is named in a report: contender and repetition."""
    return f"{run.kind} rep {run.rep + 1}"


def scenario_label(run: Run) -> str:
    """A failed run of a benchmark with several scenarios."""
    return f"{run.scenario} {run.kind} rep {run.rep + 1}"


def sized_label(run: Run) -> str:
    """A failed run of a benchmark with several scenarios and sizes."""
    return f"{run.scenario} {run.kind} n={run.clients} rep {run.rep + 1}"


def report_tail(runs: Sequence[Run], *, label: Callable[[Run], str] = run_label,
                foreign: Sequence[float] | None = None, load_note: str = "") -> list[str]:
    """The last parts of every benchmark's report: how busy the rest of the machine was
    during the measured windows (each run's ``foreign_pct`` unless `foreign` is given), and
    the runs that failed."""
    parts: list[str] = []
    if foreign is None:
        foreign = [r.values["foreign_pct"] for r in runs if "foreign_pct" in r.values]
    if foreign:
        parts.append(
            "Other processes on the machine (user CPU, % of one core, during the measured "
            f"windows{load_note}): median {statistics.median(foreign):.1f}%, max "
            f"{max(foreign):.1f}%.")
    failures = [r for r in runs if r.error]
    if failures:
        parts.append("### Failed runs\n\n" + "\n".join(
            f"- {label(r)}: {r.error}" for r in failures))
    return parts


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(runs: list[Run], plan: Plan, kinds: Sequence[str],
           scenarios: Sequence[str]) -> str:
    parts: list[str] = []
    if "fanout" in scenarios:
        header = ["server"]
        for clients, broadcasts in plan.fanout:
            header += [f"{clients:,} conns × {broadcasts}: ms CPU / 1k deliveries",
                       "vs raw", "lost"]
        rows = []
        for kind in kinds:
            row = [kind]
            for clients, _ in plan.fanout:
                value = median_of(runs, "fanout", kind, clients, "ms_per_1k")
                base = median_of(runs, "fanout", "raw", clients, "ms_per_1k")
                lost = [r.values.get("lost", 0) for r in runs
                        if r.scenario == "fanout" and r.kind == kind and r.clients == clients
                        and r.error is None]
                row += [fmt(value), ratio(value, base), fmt(max(lost, default=None), 0)]
            rows.append(row)
        parts.append("### Fan-out: server CPU per 1,000 deliveries (median)\n\n"
                     + table(header, rows))

        clients = plan.memory_clients
        rows = []
        for kind in kinds:
            kb = median_of(runs, "fanout", kind, clients, "kb_per_conn")
            connect = median_of(runs, "fanout", kind, clients, "connect_us")
            rows.append([
                kind,
                fmt(median_of(runs, "fanout", kind, clients, "rss_empty_mb"), 1),
                fmt(median_of(runs, "fanout", kind, clients, "rss_full_mb"), 1),
                fmt(kb, 1),
                ratio(kb, median_of(runs, "fanout", "raw", clients, "kb_per_conn")),
                fmt(connect, 0),
                ratio(connect, median_of(runs, "fanout", "raw", clients, "connect_us")),
            ])
        parts.append(f"### Memory: RSS per idle connection at {clients:,} (median)\n\n" + table(
            ["server", "RSS, 0 conns (MB)", f"RSS, {clients:,} conns (MB)", "KB / conn",
             "vs raw", "connect: server CPU µs / conn", "vs raw"], rows))

    if "heartbeat" in scenarios:
        rows = []
        hb_kinds = [k for k in kinds if app_kind(k) in HEARTBEAT_KINDS]
        seed_us = median_of(runs, "heartbeat", "seed", plan.heartbeat_clients, "us_per_ping")
        raw_us = median_of(runs, "heartbeat", "raw", plan.heartbeat_clients, "us_per_ping")
        for kind in hb_kinds:
            def med(key: str, k: str = kind) -> float | None:
                return median_of(runs, "heartbeat", k, plan.heartbeat_clients, key)

            us = med("us_per_ping")
            rows.append([kind, fmt(med("cpu_pct"), 1), fmt(med("pings_per_conn_s")),
                         fmt(med("min_conn_pings_per_s")), fmt(us, 1), ratio(us, raw_us),
                         ratio(us, seed_us), fmt(med("closed_by_server"), 0)])
        parts.append(
            f"### Heartbeat: {plan.heartbeat_clients:,} idle clients, interval "
            f"{plan.heartbeat_interval:g}s, timeout {plan.heartbeat_timeout:g}s, "
            f"{plan.heartbeat_window:g}s window (median)\n\n" + table(
                ["server", "CPU % of a core", "pings / conn / s", "slowest conn pings/s",
                 "µs CPU / ping", "vs raw", "vs seed", "conns closed"], rows))
    if plan.baseline_label and plan.baseline_label in kinds:
        parts.append(before_after(runs, plan, scenarios, plan.baseline_label))
    parts += report_tail(runs, label=sized_label)
    return "\n\n".join(parts)


def before_after(runs: list[Run], plan: Plan, scenarios: Sequence[str], label: str) -> str:
    """Medians of the baseline and of the stabilizer side by side, with their ratio."""
    items: list[tuple[str, float | None, float | None, int]] = []

    def both(scenario: str, clients: int, key: str) -> tuple[float | None, float | None]:
        return (median_of(runs, scenario, label, clients, key),
                median_of(runs, scenario, "stabilizer", clients, key))

    if "fanout" in scenarios:
        for clients, broadcasts in plan.fanout:
            items.append((f"fan-out {clients:,} conns × {broadcasts}: ms CPU / 1k deliveries",
                          *both("fanout", clients, "ms_per_1k"), 2))
        n = plan.memory_clients
        items.append((f"memory at {n:,}: KB / conn", *both("fanout", n, "kb_per_conn"), 1))
        items.append((f"connect at {n:,}: server CPU µs / conn",
                      *both("fanout", n, "connect_us"), 0))
    if "heartbeat" in scenarios:
        n = plan.heartbeat_clients
        items.append((f"heartbeat {n:,} conns: µs CPU / ping",
                      *both("heartbeat", n, "us_per_ping"), 1))
        items.append((f"heartbeat {n:,} conns: pings / conn / s",
                      *both("heartbeat", n, "pings_per_conn_s"), 2))
    return (f"### Before/after: stabilizer (work tree) vs {label} (median; CPU: lower is "
            "better)\n\n" + compare_table(label, items))


def environment() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: version(name) for name in (
            "uvicorn", "websockets", "fastapi", "starlette", "fastapi-websocket-stabilizer",
            "fastapi-stabilizer", "python-socketio", "python-engineio", "psutil", "uvloop",
            "httptools")},
        # the servers' event loop (bench.servers: uvicorn's "auto" takes uvloop if installed)
        "loop": os.environ.get("BENCH_LOOP", "auto"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core",
        description="Benchmark raw FastAPI sockets, fastapi-websocket-stabilizer 1.1.0, "
                    "stabilizer and python-socketio side by side; with --baseline REV, the "
                    "stabilizer of git revision REV too (before/after).")
    parser.add_argument("--quick", action="store_true",
                        help="small counts and one repetition (a smoke check)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 1)")
    parser.add_argument("--servers", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of fanout,heartbeat (memory is measured "
                             "in the largest fan-out run)")
    parser.add_argument("--stabilizer-config", metavar="JSON",
                        help='extra WebSocketConfig fields for the stabilizer server only (and '
                             'the --baseline one), for experiments, e.g. \'{"num_shards": 1}\'')
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the stabilizer app on stabilizer/ as of git revision REV "
                             "(exported with git archive to bench/results/baseline-*), as the "
                             "contender stabilizer@<short REV>, in every scenario and table "
                             "next to stabilizer (the work tree), plus a before/after table")
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/)")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = Plan(**{**asdict(plan), "reps": args.reps})
    if args.stabilizer_config:
        if not isinstance(json.loads(args.stabilizer_config), dict):
            parser.error("--stabilizer-config must be a JSON object")
        plan = Plan(**{**asdict(plan), "stabilizer_config": args.stabilizer_config})
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in KINDS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown server or scenario: {unknown}")
    if "raw" not in kinds:
        kinds.insert(0, "raw")  # every ratio is to raw

    install_cleanup()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"logs-{stamp}"
    env: dict[str, Any] = {}
    if args.baseline:
        try:
            env["baseline"] = export_baseline(args.baseline, stamp)
        except BenchError as exc:
            parser.error(str(exc))
        kinds = with_baseline(kinds, env["baseline"]["label"])
        plan = Plan(**{**asdict(plan), "baseline_label": env["baseline"]["label"],
                       "baseline_path": env["baseline"]["path"]})
    snapshot = RESULTS / f"snapshot-{stamp}"
    env = {**environment(), **snapshot_stabilizer(snapshot), **env}
    plan = Plan(**{**asdict(plan), "stabilizer_path": str(snapshot)})
    log(f"environment: {json.dumps(env)}")
    started = time.monotonic()
    try:
        runs = run_all(plan, kinds, scenarios, log_dir)
    finally:
        stop_all()
    elapsed = time.monotonic() - started

    text = report(runs, plan, kinds, scenarios)
    out = args.out or RESULTS / f"{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "environment": env,
        "plan": asdict(plan),
        "command": " ".join(["python -m bench.core", *(argv or sys.argv[1:])]),
        "elapsed_s": round(elapsed, 1),
        "runs": [asdict(r) for r in runs],
        "report": text,
    }, indent=1))
    print(f"\nMachine: {env['cpus']} × {env['cpu_model']}, Python {env['python']}, uvicorn "
          f"{env['uvicorn']}, websockets {env['websockets']}; total {elapsed:.0f}s\n"
          f"{describe_code(env)}\n")
    if plan.stabilizer_config:
        print(f"stabilizer config overrides: {plan.stabilizer_config}\n")
    print(text)
    print(f"\nAll repetitions: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
