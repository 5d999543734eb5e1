"""The app end-to-end tests run under uvicorn: chat endpoint, seed-style endpoint, admin API."""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI, WebSocket, WebSocketDisconnect

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.fastapi import lifespan, router, session

manager = WebSocketConnectionManager(WebSocketConfig.from_env())
app = FastAPI(lifespan=lifespan(manager))
app.include_router(router(manager))


@app.websocket("/ws/{client_id}")
async def chat(websocket: WebSocket, client_id: str) -> None:
    """Every text from a client is broadcast to the others as {"from", "text"}."""
    async with session(manager, websocket, client_id) as conn:
        async for message in conn:
            if isinstance(message, str) and message.startswith("echo:"):
                await conn.send(message)
            else:
                await manager.broadcast({"from": client_id, "text": message},
                                        exclude_client=client_id)


@app.websocket("/seed/{client_id}")
async def seed_style(websocket: WebSocket, client_id: str) -> None:
    """The fastapi-websocket-stabilizer README pattern, unchanged but for the import."""
    await websocket.accept()
    try:
        await manager.connect(client_id, websocket)
        while True:
            data = await websocket.receive_text()
            if data == "pong":
                await manager.handle_pong(client_id)
                continue
            await manager.broadcast({"user": client_id, "message": data})
    except WebSocketDisconnect:
        await manager.disconnect(client_id)


@app.post("/admin/broadcast")
async def admin_broadcast(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    result = None
    for _ in range(int(body.get("repeat", 1))):
        result = await manager.broadcast(body["message"], exclude_client=body.get("exclude"))
    assert result is not None
    return {"total": result.total, "succeeded": result.succeeded, "failed": result.failed,
            "remote_nodes": result.remote_nodes, "remote_error": result.remote_error}


@app.post("/admin/send/{client_id}")
async def admin_send(client_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    return {"sent": await manager.send_to_client(client_id, body["message"])}


@app.post("/admin/token/{client_id}")
async def admin_token(client_id: str) -> dict[str, str]:
    return {"token": manager.generate_reconnect_token(client_id)}


@app.post("/admin/shutdown")
async def admin_shutdown(restart: bool = False, timeout: float = 5.0) -> dict[str, Any]:
    report = await manager.graceful_shutdown(timeout=timeout, restart=restart)
    return {"closed": report.closed_count, "failed": report.failed_count,
            "close_code": report.close_code, "drained": report.drained_frames,
            "dropped": report.dropped_frames}


@app.get("/admin/cluster")
async def admin_cluster() -> dict[str, Any]:
    clients = {p.client_id: p.node_id async for p in manager.get_cluster_connections()}
    return {"node_id": manager.node_id, "count": await manager.get_cluster_connection_count(),
            "clients": clients, "nodes": await manager.get_nodes(),
            "local": sorted(manager.get_active_connections())}


@app.post("/admin/join/{client_id}/{group}")
async def admin_join(client_id: str, group: str) -> dict[str, bool]:
    await manager.join_group(client_id, group)
    return {"joined": True}


@app.post("/admin/send_group/{group}")
async def admin_send_group(group: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    return {"local": (await manager.send_to_group(group, body["message"])).succeeded}


@app.post("/admin/disconnect/{client_id}")
async def admin_disconnect(client_id: str, code: int = 1000) -> dict[str, bool]:
    return {"closed": await manager.disconnect_client(client_id, code=code, reason="admin")}
