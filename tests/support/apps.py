"""Small FastAPI apps the tests serve with a real uvicorn."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket

from stabilizer import Identity, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, session


def session_app(manager: WebSocketConnectionManager,
                identity: Identity | None = None) -> FastAPI:
    """An app whose /ws holds a session (the client named by stabilizer: a v2 client's
    device, else a device of its own; with `identity`, a device of that user) until the
    client leaves; messages go unread. The app's lifespan starts and stops `manager`."""
    app = FastAPI(lifespan=lifespan(manager))

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        async with session(manager, websocket, identity=identity) as client:
            async for _message in client:
                pass

    return app
