"""Process plumbing for the controller: servers, load generators, and their cleanup.

Every child runs in its own session (process group). ``Child.stop`` sends SIGTERM to the
group, then SIGKILL if it is still there; ``stop_all`` does that for every child still
running and is called from ``finally`` blocks, atexit and the SIGTERM handler, so no
process outlives the run. Children also end by themselves when their stdin closes.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import psutil

from bench._common import HOST

REPO: Final = Path(__file__).resolve().parent.parent
_RUNNING: set[Child] = set()
_LOCK = threading.Lock()


class BenchError(RuntimeError):
    """A run could not be carried out (a server did not start, clients did not connect)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A child process in its own process group."""

    def __init__(self, argv: list[str], log_path: Path, *, stdout_pipe: bool) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            start_new_session=True,
        )
        with _LOCK:
            _RUNNING.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the process group: SIGTERM, then SIGKILL after `grace` seconds."""
        proc = self.proc
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            # The group may hold stragglers even after its leader exited.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._log.close()
            with _LOCK:
                _RUNNING.discard(self)


def stop_all() -> None:
    """Stop every child still running (backstop for errors and signals)."""
    with _LOCK:
        children = list(_RUNNING)
    for child in children:
        with contextlib.suppress(Exception):
            child.stop(grace=2.0)


def install_cleanup() -> None:
    """Make SIGTERM/SIGHUP unwind like Ctrl-C, and stop children at exit whatever happens."""
    atexit.register(stop_all)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


class Server(Child):
    """One benchmark server (``python -m bench.servers``) and its measurements."""

    def __init__(self, kind: str, port: int, log_dir: Path, *,
                 heartbeat_interval: float | None = None,
                 heartbeat_timeout: float | None = None, max_seconds: float = 900.0,
                 extra_args: Sequence[str] = (), module: str = "bench.servers",
                 name: str | None = None) -> None:
        argv = [sys.executable, "-m", module, "--kind", kind, "--port", str(port),
                "--max-seconds", str(max_seconds), *extra_args]
        if heartbeat_interval is not None:
            argv += ["--heartbeat-interval", str(heartbeat_interval)]
        if heartbeat_timeout is not None:
            argv += ["--heartbeat-timeout", str(heartbeat_timeout)]
        label = f"{kind}-{name}" if name else kind
        super().__init__(argv, log_dir / f"server-{label}-{port}.log", stdout_pipe=False)
        self.kind = kind
        self.port = port
        self._ps = psutil.Process(self.pid)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def request(self, method: str, path: str, timeout: float = 600.0) -> dict[str, Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise BenchError(f"{method} {path} -> {response.status}: {body[:200]!r}")
            result: dict[str, Any] = json.loads(body)
            return result
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} server exited with {self.proc.returncode}; "
                                 f"see {self.log_path}")
            try:
                self.request("GET", "/bench/count", timeout=2.0)
                return
            except (OSError, BenchError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.kind} server not ready after {timeout:g}s; see "
                                     f"{self.log_path}") from None
                time.sleep(0.1)

    def count(self) -> int:
        return int(self.request("GET", "/bench/count", timeout=30.0)["count"])

    def wait_count(self, expected: int, timeout: float = 60.0) -> int:
        """Poll /bench/count until it equals `expected`; return the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.count()
            if current == expected or time.monotonic() > deadline:
                return current
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """Process CPU time (user + system) of the server, in seconds."""
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server."""
        times = self._ps.cpu_times()
        return float(times.user), float(times.system)

    def rss(self) -> int:
        return int(self._ps.memory_info().rss)


class ForeignLoad:
    """User CPU time spent during a window by processes other than `pids` (and this one).

    The machine is small and may be shared: this tells how much a measurement was disturbed.
    Kernel time is left out, as loopback traffic is partly accounted to no process.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self._procs = [psutil.Process(pid) for pid in (*pids, os.getpid())]
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        system = psutil.cpu_times()
        ours = 0.0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                ours += proc.cpu_times().user
        return system.user + system.nice, ours, time.monotonic()

    def percent(self) -> float:
        """Foreign user CPU since creation, in % of one core."""
        total, ours, now = self._read()
        total0, ours0, then = self._start
        return max((total - total0) - (ours - ours0), 0.0) / max(now - then, 1e-9) * 100


class LoadGen(Child):
    """One load generator process (``python -m bench.loadgen``), driven by JSON lines."""

    def __init__(self, index: int, log_dir: Path, max_seconds: float = 1800.0,
                 module: str = "bench.loadgen") -> None:
        argv = [sys.executable, "-m", module, "--max-seconds", str(max_seconds)]
        super().__init__(argv, log_dir / f"loadgen-{index}.log", stdout_pipe=True)
        self.index = index
        self._replies: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name=f"loadgen-{index}").start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                self._replies.put(line)
        except (ValueError, OSError):
            pass  # the pipe was closed under us by stop(): the generator is gone either way
        self._replies.put(b"")

    def send(self, cmd: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd).encode() + b"\n")
        stdin.flush()

    def reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"load generator {self.index} silent for {timeout:g}s") from None
        if not line:
            raise BenchError(f"load generator {self.index} exited; see {self.log_path}")
        result: dict[str, Any] = json.loads(line)
        return result


class Fleet:
    """Several load generators used as one."""

    def __init__(self, size: int, log_dir: Path, module: str = "bench.loadgen") -> None:
        self.gens: list[LoadGen] = []
        try:
            for index in range(size):
                self.gens.append(LoadGen(index, log_dir, module=module))
        except BaseException:
            self.stop()
            raise
        self._next_id = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [gen.pid for gen in self.gens]

    def stop(self) -> None:
        for gen in self.gens:
            with contextlib.suppress(Exception):
                if gen.proc.poll() is None:
                    gen.send({"cmd": "quit"})
        for gen in self.gens:
            gen.stop(grace=3.0)

    def _all(self, cmds: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for gen, cmd in zip(self.gens, cmds, strict=True):
            gen.send(cmd)
        return [gen.reply(timeout) for gen in self.gens]

    def connect(self, port: int, count: int, *, mode: str = "ws", prefix: str = "c",
                concurrency: int = 64, timeout: float = 120.0,
                sources: Sequence[str] = ()) -> dict[str, Any]:
        """Open `count` clients spread over the generators; raise unless all connected.

        `sources`: local addresses the clients' sockets are bound to, spread evenly (each
        generator starts at another one); the reply's ``by_source`` counts them.
        """
        paths = list(self._paths(count, mode, prefix))
        size = len(self.gens)
        shares = [paths[i::size] for i in range(size)]
        cmds = [{"cmd": "connect", "port": port, "paths": share, "mode": mode,
                 "concurrency": concurrency, "timeout": 30.0,
                 **({"sources": [*sources[i % len(sources):], *sources[:i % len(sources)]]}
                    if sources else {})}
                for i, share in enumerate(shares)]
        started = time.monotonic()
        replies = self._all(cmds, timeout)
        connected = sum(r["connected"] for r in replies)
        if connected != count:
            errors = [e for r in replies for e in r["errors"]][:5]
            raise BenchError(f"only {connected} of {count} clients connected: {errors}")
        by_source: dict[str, int] = {}
        for reply in replies:
            for addr, opened in reply.get("by_source", {}).items():
                by_source[addr] = by_source.get(addr, 0) + opened
        return {"connected": connected, "seconds": time.monotonic() - started,
                **({"by_source": by_source} if sources else {})}

    def _paths(self, count: int, mode: str, prefix: str) -> Iterator[str]:
        for _ in range(count):
            self._next_id += 1
            if mode == "sio":
                yield "/socket.io/?EIO=4&transport=websocket"
            else:
                yield f"/ws/{prefix}{self._next_id}"

    def stats(self, *, light: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        """Sum the generators' counters (ping_min/ping_max: min/max over all clients;
        bcast_at: the latest of the generators').

        `light` skips the per-client figures (open, ping_min, ping_max): cheap enough to
        poll while a measurement runs.
        """
        cmd = {"cmd": "stats", "light": light}
        replies = self._all([cmd] * len(self.gens), timeout)
        total: dict[str, Any] = {}
        for reply in replies:
            for key, value in reply.items():
                if key == "ping_min":
                    total[key] = min(total.get(key, value), value)
                elif key in ("ping_max", "bcast_at"):
                    total[key] = max(total.get(key, value), value)
                else:
                    total[key] = total.get(key, 0) + value
        return total

    def mark(self) -> None:
        self._all([{"cmd": "mark"}] * len(self.gens), 30.0)

    def close(self) -> None:
        self._all([{"cmd": "close"}] * len(self.gens), 60.0)
