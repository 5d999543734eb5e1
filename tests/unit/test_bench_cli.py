"""Every benchmark's command line explains itself: `--help` prints a usage and exits 0
(argparse formats help strings with %, so a bare "80% of" in one broke `--help`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
WITH_PARSERS = sorted(path.stem for path in BENCH.glob("*.py")
                      if "ArgumentParser(" in path.read_text(encoding="utf-8"))


def test_the_benchmarks_with_a_command_line_are_found() -> None:
    assert {"core", "hundredk", "storm"} <= set(WITH_PARSERS)


@pytest.mark.parametrize("module", WITH_PARSERS)
def test_help_prints_a_usage(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", "--help"],
                          cwd=BENCH.parent, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
