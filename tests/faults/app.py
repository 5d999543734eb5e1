"""The app the fault checker's replicas run: a plain session endpoint and an admin API.

Only public manager methods and the WebSocket protocol are used, so the same app serves the
code before the split-brain fix (commit 13bff3a) and today's. `GET /faults/local` is the one
window into the process itself: live Connection objects (found by the garbage collector,
whatever module defines them), task names and WebSocket handler tasks, for the "nothing
released stays alive" invariant.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from fastapi import Body, FastAPI, WebSocket
from fastapi.responses import JSONResponse

import stabilizer
from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.errors import BackendUnavailable, BroadcastFailedError, ConnectionNotFoundError
from stabilizer.fastapi import lifespan, router, session

manager = WebSocketConnectionManager(WebSocketConfig.from_env())
app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=5.0))
app.include_router(router(manager))


@app.exception_handler(BackendUnavailable)
async def backend_unavailable(_request: Any, exc: BackendUnavailable) -> JSONResponse:
    """A documented, expected failure while Redis is unreachable: 503, no traceback."""
    return JSONResponse({"error": "backend unavailable", "detail": str(exc)}, status_code=503)


@app.exception_handler(ConnectionNotFoundError)
async def not_found(_request: Any, exc: ConnectionNotFoundError) -> JSONResponse:
    """The client is connected nowhere: 404."""
    return JSONResponse({"error": "not connected", "detail": str(exc)}, status_code=404)


@app.exception_handler(BroadcastFailedError)
async def broadcast_failed(_request: Any, exc: BroadcastFailedError) -> JSONResponse:
    """Every recipient failed (documented): 200 with the result, so it is not a crash."""
    result = _result(exc.result) if exc.result is not None else {}
    return JSONResponse({"failed_all": True, **result})


@app.websocket("/ws/{client_id}")
async def endpoint(websocket: WebSocket, client_id: str) -> None:
    """Serve one client; what it sends is ignored (the checker drives traffic over HTTP)."""
    async with session(manager, websocket, client_id) as conn:
        async for _message in conn:
            pass


def _result(result: Any) -> dict[str, Any]:
    return {"total": result.total, "succeeded": result.succeeded, "failed": result.failed,
            "remote_error": result.remote_error, "offset": getattr(result, "offset", None),
            "epoch": getattr(result, "epoch", None)}


@app.post("/faults/broadcast")
async def broadcast(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Broadcast `message` (`repeat` times) to every client of the cluster."""
    results = [_result(await manager.broadcast(message))
               for message in _repeated(body["message"], int(body.get("repeat", 1)))]
    return {"results": results}


def _repeated(message: dict[str, Any], repeat: int) -> list[dict[str, Any]]:
    return [message] if repeat == 1 else [{**message, "r": index} for index in range(repeat)]


@app.post("/faults/send/{client_id}")
async def send(client_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Send `message` to one client, wherever it is."""
    return {"sent": await manager.send_to_client(client_id, body["message"])}


@app.post("/faults/group/{group}/send")
async def group_send(group: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Send `message` to every member of `group`."""
    return _result(await manager.send_to_group(group, body["message"]))


@app.post("/faults/group/{group}/join/{client_id}")
async def join(group: str, client_id: str) -> dict[str, Any]:
    """Add a client on any replica to `group`, listed in its presence (so that every end
    of a membership must remove a presence entry too)."""
    await manager.join_group(client_id, group, presence={"client": client_id})
    return {"joined": True, "local": manager.is_connected(client_id)}


@app.post("/faults/group/{group}/leave/{client_id}")
async def leave(group: str, client_id: str) -> dict[str, Any]:
    """Remove a client on any replica from `group`."""
    await manager.leave_group(client_id, group)
    return {"left": True, "local": manager.is_connected(client_id)}


@app.get("/faults/groups")
async def groups(names: str) -> dict[str, list[str]]:
    """Cluster-wide members of each comma-separated group."""
    return {name: sorted(await manager.get_group_members(name))
            for name in names.split(",") if name}


@app.get("/faults/cluster")
async def cluster() -> dict[str, Any]:
    """Presence and counts as this replica sees them."""
    clients = {p.client_id: [p.node_id, p.conn_id]
               async for p in manager.get_cluster_connections()}
    return {"node_id": manager.node_id, "count": await manager.get_cluster_connection_count(),
            "clients": clients, "nodes": sorted(await manager.get_nodes())}


@app.get("/faults/local")
async def local() -> dict[str, Any]:
    """This process: its pool, live Connection objects, tasks, and which code it runs."""
    pool: dict[str, str] = {}
    for client_id in manager.get_active_connections():
        conn = manager.get_connection(client_id)
        if conn is not None:
            pool[client_id] = str(conn.conn_id)
    gc.collect()
    found = [obj for obj in gc.get_objects() if _is_server_connection(obj)]
    objects = [{"client_id": str(obj.client_id), "conn_id": str(obj.conn_id),
                "state": str(getattr(obj, "state", "?")),
                "held_by": [] if obj.conn_id in pool.values() else _holders(obj, found)}
               for obj in found]
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    return {"node_id": manager.node_id, "pool": pool, "connections": objects,
            "task_names": sorted(task.get_name() for task in tasks),
            "socket_handlers": sum(1 for task in tasks if _is_socket_handler(task)),
            "backend_available": bool(getattr(manager.backend, "available", True)),
            "stabilizer": stabilizer.__file__}


def _is_server_connection(obj: object) -> bool:
    kind = type(obj)
    module = getattr(kind, "__module__", "") or ""
    return (kind.__name__ == "Connection" and module.startswith("stabilizer.")
            and not module.startswith("stabilizer.client") and hasattr(obj, "conn_id"))


def _holders(obj: object, found: list[Any]) -> list[str]:
    """What keeps a departed Connection alive: its referrers' types, two levels up."""
    described = []
    for referrer in gc.get_referrers(obj):
        if referrer is found:
            continue
        above = [type(r).__name__ for r in gc.get_referrers(referrer) if r is not found][:4]
        described.append(f"{type(referrer).__name__}<-{'/'.join(above)}")
    return described[:6]


def _is_socket_handler(task: asyncio.Task[Any]) -> bool:
    """uvicorn runs each WebSocket in a task of its protocol's run_asgi (HTTP requests run
    in RequestResponseCycle.run_asgi)."""
    name = getattr(task.get_coro(), "__qualname__", "")
    return name.endswith("run_asgi") and not name.startswith("RequestResponseCycle")
