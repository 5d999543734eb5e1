"""Test fixtures that fail half-way stop what they started: no uvicorn or nginx process
outlives a failed start (a leftover would warn, and turn an unrelated test red)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from tests.support import nginx as nginx_support
from tests.support import uvicorn_proc as uvicorn_support
from tests.support.nginx import Nginx
from tests.support.uvicorn_proc import PortTakenError, UvicornProcess, start_all

pytestmark = pytest.mark.e2e


def our_children(marker: str) -> list[psutil.Process]:
    """Processes below this one whose command line mentions `marker`."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_replica_that_does_not_become_healthy_in_time_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # its port is never taken for its own: however fast it starts, it is never healthy
    monkeypatch.setattr(uvicorn_support, "listens_on", lambda pid, port: False)
    proc = UvicornProcess()
    with pytest.raises(RuntimeError, match="did not become healthy"):
        proc.start(timeout=0.3)
    assert our_children(f"tests.e2e.serve tests.e2e.app:app {proc.port}") == []


def test_a_failed_replica_stops_the_ones_started_before_it() -> None:
    good = UvicornProcess()
    bad = UvicornProcess(app="tests.e2e.no_such_module:app")
    with pytest.raises(RuntimeError, match="exited early"):
        start_all([good, bad])
    assert good.process is None
    assert our_children("tests.e2e.serve") == []


def test_nginx_that_does_not_start_in_time_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # nginx itself starts (on a busy machine it may even listen before the first probe):
    # its port is never taken for its own, so the start times out with nginx running
    monkeypatch.setattr(nginx_support, "listens_on", lambda pid, port: False)
    proxy = Nginx([1])
    with pytest.raises(RuntimeError, match="nginx did not start"):
        proxy.start(timeout=0.3)
    assert proxy.process is None
    assert our_children(str(proxy.conf)) == []


def test_a_missing_nginx_fails_before_anything_is_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> str:
        raise RuntimeError("nginx not found: apt-get install nginx")

    monkeypatch.setattr(nginx_support, "nginx_binary", missing)
    with pytest.raises(RuntimeError, match="nginx not found"):
        Nginx([1]).start()
    assert our_children("nginx") == []


@contextlib.contextmanager
def foreign_server() -> Iterator[int]:
    """Another process's HTTP server on a loopback port, answering 200 to everything (what
    a concurrent test run's server on a reused port looks like to a readiness probe)."""

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_nginx_is_not_ready_because_someone_else_answers_on_its_port() -> None:
    """Seen under a loaded machine: the port free_port() picked was taken by another
    process, the probe connected to it, start() returned, and our nginx (which could not
    bind) was leaked into later tests."""
    with foreign_server() as port:
        proxy = Nginx([1])
        proxy.port = port
        proxy.conf.write_text(proxy.conf.read_text().replace(
            "listen 127.0.0.1:", f"listen 127.0.0.1:{port}; #"))
        with pytest.raises(RuntimeError, match="nginx did not start"):
            proxy.start(timeout=5.0)
        assert proxy.process is None
        assert our_children(str(proxy.conf)) == []


def test_a_replica_is_not_healthy_because_someone_else_answers_health() -> None:
    with foreign_server() as port:
        proc = UvicornProcess(port=port)
        with pytest.raises(PortTakenError):
            proc.start(timeout=20.0)
        assert our_children(f"tests.e2e.serve tests.e2e.app:app {port}") == []


def test_a_replica_that_found_its_port_taken_starts_elsewhere_with_a_clean_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in a fault campaign (seed 2123557429): a replica's picked port was taken before
    it bound (the ephemeral range is shared with every client socket on the machine); its
    start moved it to another port, but the attempt's bind error stayed in the log the
    checker reads, and counted as the library's error."""
    with foreign_server() as taken:
        ports = iter([taken, uvicorn_support.free_port()])
        monkeypatch.setattr(uvicorn_support, "free_port", lambda: next(ports))
        proc = UvicornProcess()
        assert proc.port == taken
        try:
            proc.start(timeout=20.0)
            assert proc.port != taken
            assert "address already in use" not in proc.log().lower()
            assert "address already in use" in "\n".join(
                path.read_text() for path in proc.set_aside).lower()
        finally:
            proc.kill()
