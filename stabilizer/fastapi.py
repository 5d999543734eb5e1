"""FastAPI integration: serve a socket in one call, a lifespan, and an ops router.

The smallest chat endpoint::

    manager = WebSocketConnectionManager(WebSocketConfig.from_env())
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(router(manager))

    @app.websocket("/ws/{client_id}")
    async def chat(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id) as conn:
            async for message in conn:        # str (text frame) or bytes (binary frame)
                if isinstance(message, str):
                    await manager.broadcast({"user": client_id, "message": message})
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Final

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket, params
from fastapi.responses import FileResponse, JSONResponse, Response

from stabilizer.auth.identity import Identity
from stabilizer.config import CompressionMode, WebSocketConfig
from stabilizer.dashboard import search, snapshot
from stabilizer.errors import BackendUnavailable, ConfigError, InvalidClientIdError
from stabilizer.manager import WebSocketConnectionManager
from stabilizer.node.context import Phase
from stabilizer.pure.text import check_client_id
from stabilizer.pure.waits import wait_seconds
from stabilizer.session import Session
from stabilizer.surveys import ClusterCache, PoolView, survey

logger = logging.getLogger(__name__)
MessageHandler = Callable[[str | bytes], Awaitable[None]]
STATIC = Path(__file__).parent / "static"
#: How long /stats reuses the cluster-wide count it read from the store (as /metrics does).
STATS_CLUSTER_MAX_AGE: Final = 5.0
#: The browser client's parts, by name: the only files GET /stabilizer/{name}.js serves.
BROWSER_PARTS: Final[dict[str, Path]] = {
    path.stem: path for path in sorted((STATIC / "stabilizer").glob("*.js")) if path.is_file()
}


def session(
    manager: WebSocketConnectionManager,
    websocket: WebSocket,
    client_id: str | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    welcome: bool = True,
    identity: Identity | None = None,
) -> Session:
    """Return a Session for `websocket`.

    A plain client resumes with ``token`` (and, with history, ``positions``) query
    parameters; a v2 client sends them in its connect frame. Without `client_id` a v2
    client is named by its device (under its user), a plain one gets a generated id.
    `identity` is a user the application authenticated itself (a dependency); otherwise
    the manager's authenticator, if any, runs.
    """
    token = positions = None
    if websocket.scope.get("query_string"):  # most clients send none: nothing to parse
        query = websocket.query_params
        token = query.get("token") or None
        positions = query.get("positions") or None
    return manager.open_session(websocket, client_id, metadata=metadata, token=token,
                                positions=positions, welcome=welcome, identity=identity)


async def serve(
    manager: WebSocketConnectionManager,
    websocket: WebSocket,
    client_id: str | None = None,
    on_message: MessageHandler | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    welcome: bool = True,
    identity: Identity | None = None,
) -> Session:
    """Serve `websocket` until the client leaves, passing each message to `on_message`.

    Accepts (choosing protocol v2 when offered), authenticates, validates a reconnect
    token, registers, answers heartbeats, enforces max_message_size and always
    unregisters. Returns the finished Session (``refused`` tells why a socket was turned
    away).
    """
    async with session(manager, websocket, client_id, metadata=metadata,
                       welcome=welcome, identity=identity) as current:
        async for message in current:
            if on_message is not None:
                await on_message(message)
    return current


def lifespan(
    manager: WebSocketConnectionManager,
    *,
    shutdown_timeout: float = 30.0,
    drain_on_signal: bool = True,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Return a FastAPI lifespan that starts the manager and shuts it down gracefully.

    uvicorn answers SIGTERM/SIGINT by closing every WebSocket with a bare 1012 *before* the
    lifespan shutdown runs, which would skip draining and retry advice. With
    `drain_on_signal` the first SIGTERM or SIGINT first runs ``graceful_shutdown`` (refuse
    new sockets, drain outboxes, close with 1001/1012 and jittered retry advice) and then
    hands the signal to the server's own handler. A second signal skips the drain.

    Raises:
        ConfigError: `shutdown_timeout` is not a finite number of seconds, 0 or more.
    """
    shutdown_timeout = wait_seconds("shutdown_timeout", shutdown_timeout)

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        restore = _drain_before_server_exit(manager, shutdown_timeout) if drain_on_signal else None
        try:
            yield
        finally:
            if restore is not None:
                restore()
            await manager.graceful_shutdown(timeout=shutdown_timeout)

    return _lifespan


def _drain_before_server_exit(
    manager: WebSocketConnectionManager, timeout: float
) -> Callable[[], None] | None:
    """Chain a handler in front of the server's SIGTERM/SIGINT handlers; return an undo."""
    if threading.current_thread() is not threading.main_thread():
        return None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    draining: list[asyncio.Task[Any]] = []

    def pass_on(sig: int, frame: FrameType | None) -> None:
        handler = previous.get(sig)
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain_then_exit(sig: int, frame: FrameType | None) -> None:
        try:
            await manager.graceful_shutdown(timeout=timeout)
        except Exception:
            logger.exception("graceful shutdown on signal %d failed", sig)
        finally:
            pass_on(sig, frame)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if draining:  # a second signal: do not wait any longer
            pass_on(sig, frame)
            return
        logger.info("signal %d: draining WebSocket connections before the server stops", sig)
        loop.call_soon_threadsafe(
            lambda: draining.append(loop.create_task(drain_then_exit(sig, frame)))
        )

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError):  # not allowed here: leave the server's handling alone
            return None

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore


def router(manager: WebSocketConnectionManager, *, prefix: str = "",
           dependencies: Sequence[params.Depends] | None = None,
           dashboard: bool = False, allow_anonymous_dashboard: bool = False) -> APIRouter:
    """Return an APIRouter with GET /health (503 while draining), GET /stabilizer.js and
    /stabilizer/{name}.js (the browser client and its parts), GET /stats and, with
    ``enable_metrics``, GET /metrics; with `dashboard`, the live dashboard at GET /dashboard
    (see _serve_dashboard).

    `dependencies` (FastAPI's ``Depends(...)``) guard /stats, /metrics and the dashboard;
    /health, the browser client's modules and /dashboard.js (static code, no data) stay
    open for load balancers and browsers. /stats and /metrics show counts and node ids, no
    client, user or group, so they are served without dependencies too (guard them in
    production all the same). The dashboard lists client ids, user ids and group names and
    disconnects clients on every replica: it needs `dependencies`, or
    `allow_anonymous_dashboard` to serve it to anyone who reaches the router (a demo on
    loopback, or a network only operators reach).

    Raises:
        ConfigError: `dashboard` without `dependencies` or `allow_anonymous_dashboard`;
            enable_metrics is set but prometheus-client is not installed.
    """
    guards = list(dependencies or ())
    if dashboard and not guards:
        if not allow_anonymous_dashboard:
            raise ConfigError(
                "router(dashboard=True) without dependencies lets anyone list and disconnect "
                "clients on every replica: pass dependencies=[Depends(your_admin_check)], or "
                "allow_anonymous_dashboard=True if only trusted callers can reach it")
        logger.warning("the dashboard at %s/dashboard is open to anyone who reaches it "
                       "(allow_anonymous_dashboard=True): it lists and disconnects clients",
                       prefix)
    api = APIRouter(prefix=prefix, tags=["stabilizer"])
    guarded = APIRouter(dependencies=guards)

    @api.get("/health")
    async def health() -> JSONResponse:
        backend = manager.backend
        body = {
            "status": "ok" if manager.phase is Phase.RUNNING else manager.phase.value,
            "node_id": manager.node_id,
            "connections": manager.get_connection_count(),
            "backend": backend.name,
            "backend_available": backend.available,
        }
        ready = manager.phase in (Phase.RUNNING, Phase.NEW)
        return JSONResponse(body, status_code=200 if ready else 503)

    _serve_browser_client(api)

    cluster = ClusterCache(STATS_CLUSTER_MAX_AGE, time.monotonic)

    @guarded.get("/stats")
    async def stats() -> dict[str, Any]:
        # (open by default: a slice of the pool per loop pass, and the store asked at most
        # every few seconds, so that requests cannot stall the node nor load its Redis)
        pool = PoolView()
        for _ in survey(manager, pool):
            await asyncio.sleep(0)
        body: dict[str, Any] = {
            "node_id": manager.node_id,
            "phase": manager.phase.value,
            "active_connections": manager.get_connection_count(),
            "memory": pool.memory_usage(),
            "counters": manager.stats.as_dict(),
            "backend": manager.backend.name,
        }
        if manager.backend.is_shared:
            await cluster.refresh(manager)
            body["cluster_connections"] = (cluster.value.connections
                                           if cluster.value is not None else None)
        return body

    if manager.config.enable_metrics:
        _serve_metrics(guarded, manager)
    if dashboard:
        _serve_dashboard(api, guarded, manager)
    api.include_router(guarded)
    return api


def _serve_browser_client(api: APIRouter) -> None:
    """GET /stabilizer.js (the browser client, an ES module) and /stabilizer/{name}.js, the
    parts it imports by relative URLs: only those in BROWSER_PARTS, 404 for any other name."""
    @api.get("/stabilizer.js", include_in_schema=False)
    async def browser_client() -> FileResponse:
        return FileResponse(STATIC / "stabilizer.js", media_type="text/javascript")

    @api.get("/stabilizer/{name}.js", include_in_schema=False)
    async def browser_client_part(name: str) -> FileResponse:
        part = BROWSER_PARTS.get(name)  # the path comes from the list, never from the URL
        if part is None:
            raise HTTPException(status_code=404)
        return FileResponse(part, media_type="text/javascript")


#: The dashboard page's own script and styles only, and no other site may frame it: its
#: disconnect button, framed elsewhere under the operator's credentials, could be clicked
#: by a trick (clickjacking). X-Frame-Options for browsers without frame-ancestors.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _serve_dashboard(api: APIRouter, guarded: APIRouter,
                     manager: WebSocketConnectionManager) -> None:
    """GET /dashboard (the page), /dashboard.js (its script, open), /dashboard/data (the
    cluster as JSON), /dashboard/clients?q= (search) and POST /dashboard/disconnect (a
    JSON body ``{"client_id": ...}``; any other content type is refused with 415, so a
    cross-site form cannot post it)."""
    @api.get("/dashboard.js", include_in_schema=False)
    async def dashboard_script() -> FileResponse:
        return FileResponse(STATIC / "dashboard.js", media_type="text/javascript")

    @guarded.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                            headers=PAGE_HEADERS)

    @guarded.get("/dashboard/data")
    async def dashboard_data() -> dict[str, Any]:
        return await snapshot(manager)

    @guarded.get("/dashboard/clients")
    async def dashboard_clients(q: str) -> JSONResponse:
        try:
            return JSONResponse(await search(manager, q))
        except BackendUnavailable:
            return JSONResponse({"error": "backend unavailable"}, status_code=503)

    @guarded.post("/dashboard/disconnect")
    async def dashboard_disconnect(request: Request) -> JSONResponse:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":  # (media types are case-insensitive)
            return JSONResponse({"error": "send application/json"}, status_code=415)
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not JSON; or nested deeper than it parses
            body = None
        client_id = body.get("client_id") if isinstance(body, dict) else None
        try:
            check_client_id(client_id, manager.config.max_client_id_length)
        except InvalidClientIdError as exc:
            return JSONResponse({"error": f"client_id (a string) is required: {exc}"},
                                status_code=422)
        assert isinstance(client_id, str)
        try:
            done = await manager.disconnect_client(client_id,
                                                   reason="disconnected from the dashboard")
        except BackendUnavailable:
            return JSONResponse({"error": "backend unavailable"}, status_code=503)
        return JSONResponse({"client_id": client_id, "disconnected": done})


def _serve_metrics(api: APIRouter, manager: WebSocketConnectionManager) -> None:
    """Add GET /metrics (prometheus-client is an optional extra: imported only now)."""
    try:
        from stabilizer.metrics import CONTENT_TYPE, exporter_for
    except ImportError as exc:
        raise ConfigError(f"enable_metrics: {exc}") from exc
    exporter = exporter_for(manager)

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await exporter.render(), media_type=CONTENT_TYPE)


def run(app: Any, manager: WebSocketConnectionManager, **uvicorn_settings: Any) -> None:
    """Serve `app` with uvicorn and the options the manager's config asks of the server
    (``compression``, the frame-size cap); other keywords go to ``uvicorn.run``.

    With the uvicorn command line instead, pass the same settings yourself (see
    uvicorn_options): the server, not the manager, negotiates compression.
    """
    import uvicorn  # only here: the server is the application's choice

    uvicorn.run(app, **{**uvicorn_options(manager.config), **uvicorn_settings})


def uvicorn_options(config: WebSocketConfig) -> dict[str, Any]:
    """Map the options the ASGI server must apply onto uvicorn.run / uvicorn.Config keywords.

    Compression is negotiated by the server during the handshake, so ``compression`` is
    honoured here; ``max_message_size`` is enforced by the session, and uvicorn's own cap
    is set just above it so the session can answer with 1009 itself.
    """
    return {
        "ws_per_message_deflate": config.compression is CompressionMode.DEFLATE,
        "ws_max_size": config.max_message_size + 1024,
    }
