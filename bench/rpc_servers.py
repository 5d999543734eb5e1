"""The servers of ``bench.rpc``: one procedure, ``add``, three ways, each run by uvicorn alone.

Kinds:

* ``raw``: a plain FastAPI endpoint ``/rpc`` that reads ``{"id", "method", "params"}`` and
  answers ``{"id", "result"}`` in its own receive loop (no task per call): the floor.
* ``stabilizer``: ``@manager.rpc("add")`` and a v2 endpoint ``/v2``
  (``session(manager, websocket)``, no authenticator: anonymous clients), heartbeat off.
* ``socketio``: python-socketio's AsyncServer as an ASGI app with an ``add`` event handler
  that returns the sum (Socket.IO sends it back as the ack of the client's ``call``).

Every procedure returns ``params["a"] + params["b"]``. Every kind serves ``bench.servers``'
control endpoints (``GET /bench/count``: connected sockets) and runs under the same
uvicorn settings (``bench.servers.UVICORN_OPTIONS``).

Run as ``python -m bench.rpc_servers --kind raw --port 8000``; the process stops by itself
when its stdin closes or its lifetime ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench._common import HOST, exit_with_parent, raise_nofile_limit
from bench.servers import UVICORN_OPTIONS, add_bench_routes

KINDS: Final = ("raw", "stabilizer", "socketio")


def add(params: Any) -> Any:
    """The one procedure every kind serves."""
    return params["a"] + params["b"]


async def no_broadcast(text: str) -> None:
    """``/bench/broadcast`` is part of the shared control routes; nothing here uses it."""


def raw_app() -> FastAPI:
    procedures = {"add": add}
    count = [0]
    app = FastAPI()

    @app.websocket("/rpc")
    async def rpc(websocket: WebSocket) -> None:
        await websocket.accept()
        count[0] += 1
        try:
            while True:
                request = json.loads(await websocket.receive_text())
                result = procedures[request["method"]](request["params"])
                await websocket.send_text(json.dumps({"id": request["id"], "result": result},
                                                     separators=(",", ":")))
        except WebSocketDisconnect:
            pass
        finally:
            count[0] -= 1

    add_bench_routes(app, no_broadcast, lambda: count[0])
    return app


def stabilizer_app(overrides: dict[str, Any] | None) -> FastAPI:
    from stabilizer import RPCCall, WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import lifespan, session

    manager = WebSocketConnectionManager(WebSocketConfig(**{
        "heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0, **(overrides or {}),
    }))
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))

    @manager.rpc("add")
    async def add_call(call: RPCCall) -> Any:
        return add(call.params)

    @app.websocket("/v2")
    async def v2(websocket: WebSocket) -> None:
        async with session(manager, websocket) as conn:
            async for _message in conn:  # the clients send calls only
                pass

    add_bench_routes(app, manager.broadcast, manager.get_connection_count)
    return app


def socketio_app() -> Any:
    import socketio

    # The heartbeat "off" as bench.servers has it: an interval far longer than any run.
    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=3600.0, ping_timeout=7200.0,
                               logger=False, engineio_logger=False)
    connected: set[str] = set()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        connected.add(sid)

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)

    @sio.on("add")
    async def add_event(sid: str, params: Any) -> Any:
        return add(params)  # the return value is the ack: the client's call() gets it

    api = FastAPI()
    add_bench_routes(api, no_broadcast, lambda: len(connected))
    return socketio.ASGIApp(sio, other_asgi_app=api)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stabilizer-config", type=json.loads, default=None,
                        help="stabilizer: JSON object of extra WebSocketConfig fields")
    parser.add_argument("--stabilizer-path", default=None,
                        help="import the stabilizer package from this folder (a snapshot)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    raise_nofile_limit()
    exit_with_parent(args.max_seconds)
    if args.stabilizer_path:
        sys.path.insert(0, args.stabilizer_path)
    if args.kind == "raw":
        app: Any = raw_app()
    elif args.kind == "stabilizer":
        app = stabilizer_app(args.stabilizer_config)
    else:
        app = socketio_app()
    if "stabilizer" in sys.modules:
        print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}", file=sys.stderr,
              flush=True)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
