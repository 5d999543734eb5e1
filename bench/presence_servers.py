"""The servers of ``bench.presence``: joins and leaves of one group, three ways, each run by
uvicorn alone on a redis-server the controller started (``--redis-url``).

Kinds:

* ``raw``: the floor. A plain FastAPI endpoint ``/ws/{client_id}``; a join is one Lua
  script (EVALSHA) that SADDs the client to the group's member set and the group to the
  client's set and, with metadata, HSETs the client's presence entry and PUBLISHes the
  change on the group's channel; a leave undoes it the same way. Nothing follows the
  channel: no diffs reach anyone.
* ``stabilizer``: the Redis backend (``WebSocketConfig(redis_url=...)``), heartbeat off, no
  history; plain clients on ``/ws/{client_id}`` (``session``), v2 clients on ``/v2``.
  A join is ``manager.join_group(cid, group, presence=meta)`` (no ``presence``: a plain
  membership), a leave ``manager.leave_group(cid, group)``. The ``on_subscribe`` hook
  allows every v2 subscribe: with ``params`` ``{"gen": g}`` the client is listed in the
  channel's presence with ``{"gen": g}``, without it the client joins without metadata
  (a follower of the presence that is not listed itself).
* ``socketio``: python-socketio's AsyncServer with ``AsyncRedisManager(url)``; a join is
  ``sio.enter_room(sid, group)``, a leave ``sio.leave_room(sid, group)``. Rooms are local
  to each server (no Redis for a client of this server) and have no presence.

Every kind serves ``bench.servers``' control routes (``GET /bench/count``: sockets) and:

* ``POST /bench/join?n=N&meta=0|1&group=G``: the N oldest plain clients join G, one after
  the other (with ``meta=1`` each with metadata ``{"name": "user <cid>", "status":
  "online"}``); returns the wall seconds and the failures;
* ``POST /bench/leave?n=N&group=G``: the same N clients leave G;
* ``GET /bench/presence?group=G`` (stabilizer): how many connections G's presence lists
  and how many members G has, as Redis says.

Run as ``python -m bench.presence_servers --kind raw --port 8000 --redis-url URL``; the
process stops by itself when its stdin closes or its lifetime ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench._common import HOST, exit_with_parent, raise_nofile_limit
from bench.rpc_client import Failures
from bench.rpc_servers import no_broadcast
from bench.servers import UVICORN_OPTIONS, add_bench_routes

KINDS: Final = ("raw", "stabilizer", "socketio")

#: change(member, group, meta or None, join?) for one member, as one library does it
Change = Callable[[str, str, dict[str, str] | None, bool], Awaitable[Any]]

#: KEYS: members of the group, groups of the client, the group's presence hash;
#: ARGV: client id, group, "join" or "leave", metadata JSON ("" for none), the channel
RAW_CHANGE: Final = """
if ARGV[3] == 'join' then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
    redis.call('PUBLISH', ARGV[5], 'j' .. ARGV[1] .. ' ' .. ARGV[4])
  end
else
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  if redis.call('HDEL', KEYS[3], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[5], 'l' .. ARGV[1])
  end
end
return 1
"""


def meta_of(member: str) -> dict[str, str]:
    """The presence metadata of a join with ``meta=1`` (about 40 bytes as JSON)."""
    return {"name": f"user {member}", "status": "online"}


def add_presence_routes(app: FastAPI, members: Callable[[], list[str]], change: Change) -> None:
    """The routes that run the joins and leaves, identical for every kind."""

    async def run(n: int, group: str, meta: bool, join: bool) -> dict[str, Any]:
        failures = Failures()
        chosen = members()[:n]
        if len(chosen) < n:
            failures.add(f"only {len(chosen)} clients connected, {n} asked for")
        started = time.perf_counter()
        for member in chosen:
            try:
                await change(member, group, meta_of(member) if meta else None, join)
            except Exception as exc:  # counted and reported: one failure must not end the run
                failures.add(f"{member}: {exc!r}")
        return {"wall_s": time.perf_counter() - started, "done": len(chosen),
                **failures.as_dict()}

    @app.post("/bench/join")
    async def join(n: int, meta: int = 0, group: str = "room") -> dict[str, Any]:
        return await run(n, group, bool(meta), True)

    @app.post("/bench/leave")
    async def leave(n: int, group: str = "room") -> dict[str, Any]:
        return await run(n, group, False, False)


def raw_app(redis_url: str) -> FastAPI:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    script = redis.register_script(RAW_CHANGE)
    plain: dict[str, WebSocket] = {}  # insertion order: the oldest first

    async def change(member: str, group: str, meta: dict[str, str] | None, join: bool) -> None:
        encoded = "" if meta is None else json.dumps(meta, separators=(",", ":"))
        await script(keys=[f"raw:g:{group}", f"raw:c:{member}", f"raw:p:{group}"],
                     args=[member, group, "join" if join else "leave", encoded,
                           f"raw:pc:{group}"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{client_id}")
    async def ws(websocket: WebSocket, client_id: str) -> None:
        await websocket.accept()
        plain[client_id] = websocket
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            plain.pop(client_id, None)

    add_bench_routes(app, no_broadcast, lambda: len(plain))
    add_presence_routes(app, lambda: list(plain), change)
    return app


def stabilizer_app(redis_url: str, overrides: dict[str, Any] | None) -> FastAPI:
    from stabilizer import SubscribeRequest, WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import lifespan, session

    manager = WebSocketConnectionManager(WebSocketConfig(**{
        "redis_url": redis_url, "heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0,
        "compression": "none", "log_level": "WARNING", **(overrides or {}),
    }))
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))
    plain: dict[str, None] = {}  # insertion order: the oldest first

    @manager.on_subscribe
    def allow(request: SubscribeRequest) -> dict[str, Any] | None:
        params = request.params
        if isinstance(params, dict) and "gen" in params:
            return {"gen": params["gen"]}
        return None

    @app.websocket("/ws/{client_id}")
    async def ws(websocket: WebSocket, client_id: str) -> None:
        async with session(manager, websocket, client_id) as conn:
            plain[client_id] = None
            try:
                async for _text in conn:
                    pass
            finally:
                plain.pop(client_id, None)

    @app.websocket("/v2")
    async def v2(websocket: WebSocket) -> None:
        async with session(manager, websocket) as conn:
            async for _text in conn:
                pass

    async def change(member: str, group: str, meta: dict[str, str] | None, join: bool) -> None:
        if join:
            await manager.join_group(member, group, presence=meta)
        else:
            await manager.leave_group(member, group)

    @app.get("/bench/presence")
    async def presence(group: str = "room") -> dict[str, int]:
        return {"listed": await manager.count_presence(group),
                "members": len(await manager.get_group_members(group))}

    add_bench_routes(app, no_broadcast, manager.get_connection_count)
    add_presence_routes(app, lambda: list(plain), change)
    return app


def socketio_app(redis_url: str) -> Any:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi",
                               client_manager=socketio.AsyncRedisManager(redis_url),
                               ping_interval=3600.0, ping_timeout=7200.0, logger=False,
                               engineio_logger=False)
    connected: dict[str, None] = {}  # insertion order: the oldest first

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        connected[sid] = None

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        connected.pop(sid, None)

    async def change(member: str, group: str, meta: dict[str, str] | None, join: bool) -> None:
        # rooms carry no metadata: with meta=1 the join is the same enter_room
        if join:
            await sio.enter_room(member, group)
        else:
            await sio.leave_room(member, group)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not sio.manager_initialized:  # listen from the start, as a busy server would
            sio.manager_initialized = True
            sio.manager.initialize()
        yield

    api = FastAPI(lifespan=lifespan)
    add_bench_routes(api, no_broadcast, lambda: len(connected))
    add_presence_routes(api, lambda: list(connected), change)
    return socketio.ASGIApp(sio, other_asgi_app=api)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
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
    app: Any
    if args.kind == "raw":
        app = raw_app(args.redis_url)
    elif args.kind == "stabilizer":
        app = stabilizer_app(args.redis_url, args.stabilizer_config)
    else:
        app = socketio_app(args.redis_url)
    if "stabilizer" in sys.modules:
        print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}", file=sys.stderr,
              flush=True)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
