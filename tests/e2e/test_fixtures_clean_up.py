"""Test fixtures that fail half-way stop what they started: no uvicorn or nginx process
outlives a failed start (a leftover would warn, and turn an unrelated test red)."""

from __future__ import annotations

import psutil
import pytest

from tests.support import nginx as nginx_support
from tests.support.nginx import Nginx
from tests.support.uvicorn_proc import UvicornProcess, start_all

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


def test_a_replica_that_does_not_become_healthy_in_time_is_killed() -> None:
    proc = UvicornProcess()
    with pytest.raises(RuntimeError, match="did not become healthy"):
        proc.start(timeout=0.01)  # far less than an import of the app takes
    assert our_children(f"tests.e2e.serve tests.e2e.app:app {proc.port}") == []


def test_a_failed_replica_stops_the_ones_started_before_it() -> None:
    good = UvicornProcess()
    bad = UvicornProcess(app="tests.e2e.no_such_module:app")
    with pytest.raises(RuntimeError, match="exited early"):
        start_all([good, bad])
    assert good.process is None
    assert our_children("tests.e2e.serve") == []


def test_nginx_that_does_not_start_in_time_is_stopped() -> None:
    proxy = Nginx([1])
    with pytest.raises(RuntimeError, match="nginx did not start"):
        proxy.start(timeout=0.0)
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
