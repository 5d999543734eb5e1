"""The servers under test: one small FastAPI app per kind, each run by uvicorn alone.

Kinds:

* ``raw``: a plain list of sockets; broadcast is ``for ws in conns: await ws.send_text(m)``;
  with a heartbeat interval, a naive loop sends a JSON ping to every socket, then sleeps.
* ``seed``: fastapi-websocket-stabilizer 1.1.0 exactly as its README's Quick Start.
* ``stabilizer``: this repository's ``session`` + ``manager.broadcast``.
* ``socketio``: python-socketio's AsyncServer as an ASGI app, ``sio.emit`` to everybody.

``raw`` also serves ``/hello/{client_id}``: the same endpoint, which sends one small JSON
text frame right after accepting (``bench.identity`` times connects up to the first frame).

``bench.identity`` adds one kind, not part of ``bench.core``'s default set:

* ``stabilizer-id``: ``/ws/{client_id}`` is ``session(manager, websocket, client_id)``
  (plain, with its welcome frame) and ``/v2`` is ``session(manager, websocket)`` (protocol
  v2: the client sends a connect frame); with ``--auth hs256|rs256`` the manager has a
  ``JWTAuthenticator`` keyed by ``--auth-key-file`` (the secret, or a PEM public key).
  ``POST /bench/verify`` (body ``{"token": ..., "n": N}``) times N verifications in this
  process: the authenticator's and PyJWT's own ``jwt.decode``.

Every kind also serves ``GET /bench/count`` (connected sockets), ``POST /bench/gc``
(gc.collect, before memory readings) and ``POST /bench/broadcast?k=K&size=S`` (K broadcasts
of one S-byte text message, in sequence; returns when the last broadcast call returns).

Every kind runs under the same uvicorn settings (``UVICORN_OPTIONS``): per-message deflate
off, uvicorn's own protocol-level keepalive pings off, logs at warning, no access log, and
the event loop uvicorn picks (``auto``: uvloop where it is installed); ``BENCH_LOOP=asyncio``
in the environment makes every server of a run use asyncio's own loop instead.

Run as ``python -m bench.servers --kind raw --port 8000``; the process stops by itself when
its stdin closes or its lifetime ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from bench._common import HOST, exit_with_parent, raise_nofile_limit

KINDS: Final = ("raw", "seed", "stabilizer", "socketio")
#: Kinds only bench.identity runs (outside KINDS, bench.core's default contenders).
IDENTITY_KINDS: Final = ("stabilizer-id",)
AUTH_MODES: Final = ("none", "hs256", "rs256")
UVICORN_OPTIONS: Final[dict[str, Any]] = {
    "ws_per_message_deflate": False,
    "ws_ping_interval": None,
    "ws_ping_timeout": None,
    "log_level": "warning",
    "access_log": False,
    "lifespan": "on",
    "backlog": 4096,
    "timeout_graceful_shutdown": 3,
    "loop": os.environ.get("BENCH_LOOP", "auto"),
}

Broadcast = Callable[[str], Awaitable[Any]]


def message_of(size: int, seq: int = 0) -> str:
    """A broadcast message of `size` bytes; load generators count text starting with "b"."""
    head = f"b{seq:08d}:"
    return head + "x" * max(size - len(head), 0)


def add_bench_routes(app: FastAPI, broadcast: Broadcast, count: Callable[[], int]) -> None:
    """The control endpoints every kind serves, identical for all."""

    @app.get("/bench/count")
    async def bench_count() -> dict[str, int]:
        return {"count": count()}

    @app.post("/bench/gc")
    async def bench_gc() -> dict[str, int]:
        return {"collected": gc.collect()}

    @app.post("/bench/broadcast")
    async def bench_broadcast(k: int = 1, size: int = 64) -> dict[str, Any]:
        started = time.perf_counter()
        last: Any = None
        for seq in range(k):
            last = await broadcast(message_of(size, seq))
        return {"k": k, "seconds": time.perf_counter() - started, "last": repr(last)[:200]}


# --------------------------------------------------------------------------- raw


def raw_app(heartbeat_interval: float | None) -> FastAPI:
    conns: list[WebSocket] = []

    async def ping_loop(interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            ping = json.dumps({"type": "ping", "timestamp": time.time()})
            for ws in tuple(conns):
                # A socket that went away raises; its handler removes it from the list.
                with contextlib.suppress(Exception):
                    await ws.send_text(ping)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ping_loop(heartbeat_interval)) if heartbeat_interval else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{client_id}")
    async def websocket_endpoint(websocket: WebSocket, client_id: str) -> None:
        await websocket.accept()
        conns.append(websocket)
        try:
            while True:
                await websocket.receive_text()  # pongs are read and dropped
        except WebSocketDisconnect:
            pass
        finally:
            conns.remove(websocket)

    @app.websocket("/hello/{client_id}")
    async def hello_endpoint(websocket: WebSocket, client_id: str) -> None:
        """As /ws/{client_id}, with one first frame (bench.identity's floor for a welcome)."""
        await websocket.accept()
        await websocket.send_text(json.dumps({"type": "session", "client_id": client_id},
                                             separators=(",", ":")))
        conns.append(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            conns.remove(websocket)

    async def broadcast(m: str) -> None:
        for ws in tuple(conns):
            await ws.send_text(m)

    add_bench_routes(app, broadcast, lambda: len(conns))
    return app


# --------------------------------------------------------------------------- seed


def seed_app(heartbeat_interval: float, heartbeat_timeout: float) -> FastAPI:
    from fastapi_websocket_stabilizer import WebSocketConfig, WebSocketConnectionManager

    # The README's Quick Start, with max_connections lifted and the heartbeat as configured.
    ws_config = WebSocketConfig(
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        max_connections=None,
    )
    ws_manager = WebSocketConnectionManager(ws_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ws_manager.start()
        yield
        await ws_manager.graceful_shutdown(timeout=2.0)

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{client_id}")
    async def websocket_endpoint(websocket: WebSocket, client_id: str) -> None:
        await websocket.accept()
        try:
            await ws_manager.connect(client_id, websocket)
            while True:
                data = await websocket.receive_text()
                if data == "pong":
                    await ws_manager.handle_pong(client_id)
                    continue
                # (The Quick Start broadcasts client messages here; our clients send none.)
        except WebSocketDisconnect:
            await ws_manager.disconnect(client_id)

    add_bench_routes(app, ws_manager.broadcast, ws_manager.get_connection_count)
    return app


# --------------------------------------------------------------------------- stabilizer


def stabilizer_app(heartbeat_interval: float, heartbeat_timeout: float,
                   overrides: dict[str, Any] | None = None) -> FastAPI:
    from stabilizer import WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import lifespan, session

    manager = WebSocketConnectionManager(WebSocketConfig(
        heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
        **(overrides or {}),
    ))
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))

    @app.websocket("/ws/{client_id}")
    async def ws(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id, welcome=False) as conn:
            async for _text in conn:  # pongs are consumed by the session
                pass

    add_bench_routes(app, manager.broadcast, manager.get_connection_count)
    return app


# --------------------------------------------------------------------------- stabilizer-id


def stabilizer_id_app(auth: str, key_file: str | None,
                      overrides: dict[str, Any] | None = None) -> FastAPI:
    """Plain and v2 endpoints on one manager, with a JWTAuthenticator unless `auth` is none."""
    from stabilizer import WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import lifespan, session

    authenticator: Any = None
    verify_key: Any = None
    algorithm = auth.upper()
    if auth != "none":
        from stabilizer.auth import JWTAuthenticator

        if key_file is None:
            raise SystemExit(f"--auth {auth} needs --auth-key-file")
        with open(key_file) as handle:
            key_text = handle.read()
        if auth == "hs256":
            authenticator = JWTAuthenticator(secret=key_text)
            verify_key = key_text.encode()
        else:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            authenticator = JWTAuthenticator(public_key=key_text, algorithms=[algorithm])
            verify_key = load_pem_public_key(key_text.encode())
    manager = WebSocketConnectionManager(WebSocketConfig(**{
        "heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0, **(overrides or {}),
    }), authenticator=authenticator)
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))

    @app.websocket("/ws/{client_id}")
    async def plain(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id) as conn:
            async for _text in conn:
                pass

    @app.websocket("/v2")
    async def v2(websocket: WebSocket) -> None:
        async with session(manager, websocket) as conn:
            async for _text in conn:
                pass

    @app.post("/bench/verify")
    async def bench_verify(request: Request) -> dict[str, Any]:
        """N verifications of one token: the authenticator's, then PyJWT's alone (µs each)."""
        import jwt

        from stabilizer.auth import Credentials

        body = await request.json()
        token, n = str(body["token"]), int(body.get("n", 1000))
        if authenticator is None:
            return {"error": "no authenticator"}
        credentials = Credentials(token, None)
        started = time.process_time()
        for _ in range(n):
            await authenticator.authenticate(credentials)
        ours = time.process_time() - started
        started = time.process_time()
        for _ in range(n):
            jwt.decode(token, verify_key, algorithms=[algorithm], options={"require": ["exp"]})
        floor = time.process_time() - started
        return {"n": n, "authenticator_us": ours / n * 1e6, "pyjwt_us": floor / n * 1e6}

    add_bench_routes(app, manager.broadcast, manager.get_connection_count)
    return app


# --------------------------------------------------------------------------- socketio


def socketio_app(heartbeat_interval: float, heartbeat_timeout: float) -> Any:
    import socketio

    sio = socketio.AsyncServer(
        async_mode="asgi",
        ping_interval=heartbeat_interval,
        ping_timeout=heartbeat_timeout,
        logger=False,
        engineio_logger=False,
    )
    connected: set[str] = set()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        connected.add(sid)

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)

    async def broadcast(m: str) -> None:
        await sio.emit("msg", m)

    api = FastAPI()
    add_bench_routes(api, broadcast, lambda: len(connected))
    return socketio.ASGIApp(sio, other_asgi_app=api)


def build_app(kind: str, heartbeat_interval: float | None, heartbeat_timeout: float,
              stabilizer_config: dict[str, Any] | None = None, auth: str = "none",
              auth_key_file: str | None = None) -> Any:
    """Return the ASGI app of `kind`; no heartbeat interval means the heartbeat is off.

    `stabilizer_config`: extra WebSocketConfig fields for the stabilizer (experiments).
    `auth`, `auth_key_file`: the authenticator of ``stabilizer-id``.
    """
    if kind == "stabilizer-id":
        return stabilizer_id_app(auth, auth_key_file, stabilizer_config)
    if kind == "raw":
        return raw_app(heartbeat_interval)
    # "Off" for the libraries: an interval far longer than any run.
    interval = heartbeat_interval or 3600.0
    if kind == "seed":
        return seed_app(interval, heartbeat_timeout)
    if kind == "stabilizer":
        return stabilizer_app(interval, heartbeat_timeout, stabilizer_config)
    if kind == "socketio":
        return socketio_app(interval, heartbeat_timeout)
    raise ValueError(f"unknown server kind {kind!r}; choose from {KINDS}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark server under uvicorn.")
    parser.add_argument("--kind", choices=KINDS + IDENTITY_KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth", choices=AUTH_MODES, default="none",
                        help="stabilizer-id: JWTAuthenticator algorithm (none: no authenticator)")
    parser.add_argument("--auth-key-file", default=None,
                        help="stabilizer-id: file holding the HS256 secret or the PEM public key")
    parser.add_argument("--heartbeat-interval", type=float, default=None,
                        help="seconds between pings; omitted: heartbeat off")
    parser.add_argument("--heartbeat-timeout", type=float, default=7200.0)
    parser.add_argument("--stabilizer-config", type=json.loads, default=None,
                        help='JSON object of extra WebSocketConfig fields, e.g. {"num_shards": 1}')
    parser.add_argument("--stabilizer-path", default=None,
                        help="import the stabilizer package from this folder (a snapshot)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="exit by itself after this long (default 900)")
    args = parser.parse_args()
    raise_nofile_limit()
    exit_with_parent(args.max_seconds)
    if args.stabilizer_path:
        sys.path.insert(0, args.stabilizer_path)
    app = build_app(args.kind, args.heartbeat_interval, args.heartbeat_timeout,
                    args.stabilizer_config, args.auth, args.auth_key_file)
    if "stabilizer" in sys.modules:
        print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}", file=sys.stderr,
              flush=True)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
