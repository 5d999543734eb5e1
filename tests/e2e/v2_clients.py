"""Python clients of tests/e2e/v2_app.py's users (protocol v2, JWT from its admin API)."""

from __future__ import annotations

from stabilizer.client import ClientConnection, RetryPolicy, connect
from tests.support.uvicorn_proc import UvicornProcess

FAST = RetryPolicy(base=0.05, cap=0.3)


def user(server: UvicornProcess, name: str) -> ClientConnection:
    """A v2 client of user `name` on `server` (not started: use ``async with``)."""
    def token() -> str:
        return str(server.post(f"/admin/token/{name}")["token"])
    return connect(f"{server.ws}/ws", protocol=2, get_token=token, retry=FAST)
