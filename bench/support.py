"""Controller-side helpers shared by ``bench.cluster`` and ``bench.scale``.

* ``RedisProc``: a redis-server on a free loopback port, run as a ``harness.Child`` (own
  process group, stopped by ``stop_all`` like every other child), as the test suite starts
  them (tests/support/redis_server.py): no persistence, loopback only.
* ``wait_idle``: wait until no other benchmark (``bench.core``; ``bench.cluster``,
  ``scale``, ``identity``, ``burst``, ``rpc``, ``acks``, ``presence`` or ``shards`` started
  earlier), test run (pytest) or fault campaign (``tests.faults``) uses the CPU, so
  measurements do not overlap with them.
* ``post_json``, ``quantile``: small utilities.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psutil

from bench._common import HOST
from bench.harness import BenchError, Child, free_port

#: Processes whose CPU use would distort a measurement (matched in the command line).
BUSY_MARKERS: Final = ("bench.core", "pytest", "tests.faults")
#: Benchmark controllers that wait too: a run waits only for those started before it, so two
#: of them never wait for each other (the older one measures, the younger one waits).
BENCH_MARKERS: Final = ("bench.cluster", "bench.scale", "bench.identity", "bench.burst",
                         "bench.rpc", "bench.acks", "bench.presence", "bench.hundredk",
                         "bench.storm", "bench.shards")


def redis_binary() -> str:
    """redis-server (or valkey-server) on PATH, or $REDIS_SERVER_BINARY."""
    override = os.environ.get("REDIS_SERVER_BINARY")
    if override:
        return override
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise BenchError("no redis-server on PATH (apt-get install redis-server)")


def redis_cli() -> str:
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise BenchError("no redis-cli on PATH (apt-get install redis-tools)")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProc:
    """One redis-server process for one measurement; a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.port = 0
        self.child: Child | None = None
        self._dir = tempfile.mkdtemp(prefix="bench-redis-")
        self._ps: psutil.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start(self) -> None:
        for _ in range(5):
            self.port = free_port()
            log = self.log_dir / f"redis-{self.port}.log"
            self.child = Child([redis_binary(), "--port", str(self.port), "--bind", HOST,
                                "--save", "", "--appendonly", "no", "--dir", self._dir,
                                "--protected-mode", "no", "--maxclients", "10000"],
                               log, stdout_pipe=False)
            deadline = time.monotonic() + 10.0
            while not _answers_ping(self.port):
                if self.child.proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not answer; see {log}")
                time.sleep(0.02)
            else:
                self._ps = psutil.Process(self.child.pid)
                return
            text = log.read_text(errors="replace")
            self.child.stop()
            if "Address already in use" not in text:
                raise BenchError(f"redis-server exited; see {log}")
        raise BenchError("no free port for redis-server after 5 attempts")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        assert self._ps is not None
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def command(self, *args: str | int) -> Any:
        """One command over a fresh connection (redis-py, synchronous)."""
        import redis

        with redis.Redis(host=HOST, port=self.port) as client:
            return client.execute_command(*args)

    def commandstats(self) -> dict[str, int]:
        """``INFO commandstats``: calls per command (inner calls of scripts included)."""
        import redis

        with redis.Redis(host=HOST, port=self.port) as client:
            info = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(stats["calls"])
                for name, stats in info.items()}

    def monitor(self, path: Path) -> Child:
        """Start ``redis-cli MONITOR`` writing to `path`; return once it is listening."""
        child = Child([redis_cli(), "-p", str(self.port), "monitor"], path, stdout_pipe=False)
        deadline = time.monotonic() + 10.0
        while b"OK" not in path.read_bytes()[:16]:
            if child.proc.poll() is not None or time.monotonic() > deadline:
                child.stop()
                raise BenchError(f"redis-cli monitor did not start; see {path}")
            time.sleep(0.02)
        return child


def busy_processes() -> list[str]:
    """Command lines of running processes that would disturb a measurement."""
    own = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        own.update(p.pid for p in psutil.Process().parents())
        own.update(p.pid for p in psutil.Process().children(recursive=True))
    started = psutil.Process().create_time()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(proc.info.get("cmdline") or ())
        if proc.info["pid"] in own or not cmdline or "pgrep" in cmdline:
            continue
        older = (proc.info.get("create_time") or started) < started
        if any(marker in cmdline for marker in BUSY_MARKERS) or (
                older and any(marker in cmdline for marker in BENCH_MARKERS)):
            found.append(f"{proc.info['pid']}: {cmdline[:100]}")
    return found


def wait_idle(log: Any, max_wait: float = 1800.0) -> float:
    """Block while another benchmark or test run is running; return seconds waited."""
    started = time.monotonic()
    announced = False
    while (busy := busy_processes()) and time.monotonic() - started < max_wait:
        if not announced:
            log(f"waiting for other CPU-heavy runs to end: {busy[:3]}")
            announced = True
        time.sleep(5.0)
    if busy:
        log(f"still busy after {max_wait:g}s, measuring anyway: {busy[:3]}")
    return time.monotonic() - started


def post_json(port: int, path: str, body: dict[str, Any] | None = None,
              timeout: float = 600.0) -> dict[str, Any]:
    """POST a JSON body to a replica's control endpoint; return its JSON reply."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = json.dumps(body or {}).encode()
        conn.request("POST", path, body=payload,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise BenchError(f"POST {path} -> {response.status}: {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result
    finally:
        conn.close()


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(max(int(q * len(ordered) + 0.999999) - 1, 0), len(ordered) - 1)
    return float(ordered[rank])
