"""Run a task-queue worker (Celery, arq) in its own process group, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``python <args>`` with `env` added, its output in a log file; stopped with SIGTERM
    (SIGKILL after `timeout`), the whole process group (a prefork pool's children too)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="stabilizer-worker-", suffix=".log")[1])

    def start(self) -> WorkerProcess:
        """Start the worker (readiness is the caller's: its first task's answer)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, *self.args], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group and wait; SIGKILL it after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        """The worker's output so far."""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
