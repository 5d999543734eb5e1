"""Run `python -m stabilizer` in a subprocess, with an environment free of the caller's
STABILIZER_* variables (the CLI reads them as the replicas' settings)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


def cli_env(**settings: str) -> dict[str, str]:
    """os.environ without STABILIZER_* variables, plus `settings` as STABILIZER_<NAME>."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STABILIZER_")}
    env.update({f"STABILIZER_{name.upper()}": value for name, value in settings.items()})
    return env


async def cli(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run the CLI to completion (bounded) and return its status and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stabilizer", *args, env=cli_env() if env is None else env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30.0):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())
