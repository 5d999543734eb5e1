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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench._common import HOST, exit_with_parent, raise_nofile_limit
from bench.servers import UVICORN_OPTIONS, add_bench_routes

if TYPE_CHECKING:  # imported at run time from the run's snapshot (--stabilizer-path)
    from stabilizer import WebSocketConnectionManager

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


def stabilizer_node(
    overrides: dict[str, Any] | None,
) -> tuple[WebSocketConnectionManager, FastAPI]:
    """A manager (heartbeat off, embedded backend) and a FastAPI app whose lifespan runs it."""
    from stabilizer import WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import lifespan

    manager = WebSocketConnectionManager(WebSocketConfig(**{
        "heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0, **(overrides or {}),
    }))
    return manager, FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))


def stabilizer_app(overrides: dict[str, Any] | None) -> FastAPI:
    from stabilizer import RPCCall
    from stabilizer.fastapi import session

    manager, app = stabilizer_node(overrides)

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


def socketio_server() -> tuple[Any, set[str]]:
    """An AsyncServer (ASGI mode, heartbeat off) and the sids connected to it."""
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

    return sio, connected


def socketio_app() -> Any:
    import socketio

    sio, connected = socketio_server()

    @sio.on("add")
    async def add_event(sid: str, params: Any) -> Any:
        return add(params)  # the return value is the ack: the client's call() gets it

    api = FastAPI()
    add_bench_routes(api, no_broadcast, lambda: len(connected))
    return socketio.ASGIApp(sio, other_asgi_app=api)


def build(kind: str, stabilizer_config: dict[str, Any] | None) -> Any:
    """The ASGI app of `kind`."""
    if kind == "raw":
        return raw_app()
    if kind == "stabilizer":
        return stabilizer_app(stabilizer_config)
    return socketio_app()


def serve_kinds(kinds: Sequence[str], make_app: Callable[[str, dict[str, Any] | None], Any],
                description: str) -> None:
    """Parse a server's command line, build the app of its kind and run it under uvicorn."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--kind", choices=kinds, required=True)
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
    app = make_app(args.kind, args.stabilizer_config)
    if "stabilizer" in sys.modules:
        print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}", file=sys.stderr,
              flush=True)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_OPTIONS)


def main() -> None:
    serve_kinds(KINDS, build, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
