"""Chat on stabilizer: the seed's example without manual pong or disconnect handling.

Run: python -m examples.chat   (then open http://127.0.0.1:8000)
With STABILIZER_REDIS_URL set, every replica shares presence and broadcasts.
"""

from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, router, session

manager = WebSocketConnectionManager(WebSocketConfig.from_env())
app = FastAPI(lifespan=lifespan(manager))
app.include_router(router(manager))


@app.websocket("/ws/{client_id}")
async def chat(websocket: WebSocket, client_id: str) -> None:
    async with session(manager, websocket, client_id) as conn:
        async for message in conn:  # str for a text frame, bytes for a binary one
            if isinstance(message, str):  # the chat page sends text; binary frames are ignored
                await manager.broadcast({"user": client_id, "message": message})


@app.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse((Path(__file__).parent / "index.html").read_text(encoding="utf-8"))
