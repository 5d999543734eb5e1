"""WebSocket client helpers for end-to-end tests (the `websockets` library)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["ClientConnection", "closed_with", "connect", "open_client", "recv_json"]


async def open_client(url: str, **kwargs: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect and read the session (welcome) frame; return (connection, welcome)."""
    ws = await connect(url, open_timeout=5, max_size=None, **kwargs)
    welcome = await recv_json(ws)
    assert welcome["type"] == "session", welcome
    return ws, welcome


async def recv_json(ws: ClientConnection, timeout: float = 5.0, *,
                    skip_pings: bool = True) -> Any:
    """Receive the next JSON frame (heartbeat pings skipped unless asked for)."""
    async with asyncio.timeout(timeout):
        while True:
            value = json.loads(await ws.recv())
            if skip_pings and isinstance(value, dict) and value.get("type") == "ping":
                continue
            return value


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> int:
    """Wait until the server closes `ws`; return the close code it sent (1006 if none)."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else 1006
