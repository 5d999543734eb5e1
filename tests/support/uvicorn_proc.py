"""Run an ASGI app in a real uvicorn process on loopback, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.redis_server import free_port, listens_on

ROOT = Path(__file__).resolve().parents[2]


class PortTakenError(RuntimeError):
    """The port was taken between picking it and binding it."""


class UvicornProcess:
    """One uvicorn process serving `app` with STABILIZER_* settings from `env`."""

    def __init__(self, app: str = "tests.e2e.app:app", env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.app = app
        self.env = env or {}
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="stabilizer-uvicorn-", suffix=".log")[1])
        # the logs of attempts that found their port taken (kept, but not this one's log)
        self.set_aside: list[Path] = []

    @property
    def base(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """ws://127.0.0.1:<port>"""
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> UvicornProcess:
        """Start uvicorn and wait until /health answers 200 (on another port if the picked
        one was taken meanwhile)."""
        for _ in range(5):
            try:
                return self._start_once(timeout)
            except PortTakenError:
                if self._fixed_port:
                    raise
                # that attempt's log holds a node that never served, and uvicorn's bind
                # error: not what this replica logs (checkers read log())
                aside = self.log_path.with_name(f"{self.log_path.stem}-port-{self.port}.log")
                self.log_path.rename(aside)
                self.set_aside.append(aside)
                self.port = free_port()
        raise RuntimeError("no free port for uvicorn after 5 attempts")

    def _start_once(self, timeout: float) -> UvicornProcess:
        # as compose.yaml runs the replicas: handshake lines up to 128 KB (a resume's positions)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WEBSOCKETS_MAX_LINE_LENGTH": "131072",
               **self.env}
        cmd = [sys.executable, "-m", "tests.e2e.serve", self.app, str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return self._wait_healthy(timeout)
        except BaseException:
            self.kill()  # never leave a half-started replica behind
            raise

    def _wait_healthy(self, timeout: float) -> UvicornProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                if "address already in use" in self.log().lower():
                    raise PortTakenError(self.port)
                raise RuntimeError(f"uvicorn exited early:\n{self.log()}")
            try:
                if self.get("/health")[0] == 200 and listens_on(self.process.pid, self.port):
                    return self  # (a foreign server on a reused port answers /health too)
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not become healthy:\n{self.log()}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 10.0,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Send an HTTP request; return (status, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        """GET `path`."""
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        """POST `path` and return the JSON body (asserting a 2xx status)."""
        status, payload = self.request("POST", path, body)
        assert 200 <= status < 300, (status, payload)
        return payload

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig` (SIGTERM: graceful) and wait; SIGKILL after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the replica vanishes without a goodbye."""
        self.stop(sig=signal.SIGKILL)

    def log(self) -> str:
        """The process output so far."""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> UvicornProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(procs: list[UvicornProcess]) -> list[UvicornProcess]:
    """Start every process; if one fails, stop those already started, then re-raise."""
    started: list[UvicornProcess] = []
    try:
        for proc in procs:
            proc.start()
            started.append(proc)
    except BaseException:
        for proc in started:
            proc.kill()
        raise
    return procs
