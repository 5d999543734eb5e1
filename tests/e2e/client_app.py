"""A server that refuses: closes every socket with the code in its path, and counts them."""

from __future__ import annotations

import json
from collections import Counter

from fastapi import FastAPI, WebSocket

app = FastAPI()
attempts: Counter[str] = Counter()


@app.websocket("/close/{code}")
async def close_with(websocket: WebSocket, code: int, welcome: bool = False,
                     reason: str = "") -> None:
    """Accept, optionally send a session frame, then close with `code` and `reason`."""
    attempts[str(code)] += 1
    await websocket.accept()
    if welcome:
        await websocket.send_text(json.dumps({
            "type": "session", "client_id": "refused", "conn_id": str(attempts[str(code)]),
            "node_id": "client-app", "resumed": False, "token": None,
            "heartbeat_interval": 30.0, "history": False}))
    await websocket.close(code=code, reason=reason)


@app.get("/attempts")
async def attempt_counts() -> dict[str, int]:
    return dict(attempts)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
