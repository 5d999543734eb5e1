"""Replicas for the cross-replica benchmarks: one app per kind, several processes on one Redis.

Kinds (every replica of a run has the same kind and a name: A, B, R0, ...):

* ``stabilizer``: this repository with the Redis backend (``WebSocketConfig(redis_url=...)``),
  ``session`` + ``manager.send_to_client`` / ``broadcast`` / ``send_to_group``;
  ``join_group`` right after admission when the URL asks for a group (retried when it
  raises BackendUnavailable, and counted: see ``join_errors``).
* ``socketio``: python-socketio's ``AsyncServer(client_manager=AsyncRedisManager(url))``
  under uvicorn; every client enters a room named after its client id (``?cid=``) and, if
  asked, the group's room; ``sio.emit(..., to=cid | room=group)``; broadcast ``sio.emit``.
* ``raw``: the floor, plain redis-py pub/sub. Each replica SUBSCRIBEs to ``raw:all``,
  ``raw:n:<its name>`` and ``raw:g:<group>``; a direct message is one PUBLISH to the node
  that holds the client (the sender is told which node: no lookup), a broadcast or group
  message one PUBLISH to the shared channel. The subscriber forwards with a plain loop of
  ``await ws.send_text(text)``; a replica ignores its own publications. Local clients of the
  sender get a broadcast from a plain loop too.

Users (``bench.identity``): with ``--jwt-secret`` the stabilizer replica's manager has a
``JWTAuthenticator`` (HS256) and serves ``/v2``, ``session(manager, websocket)``: protocol
v2 clients named ``<user>/<device>``; ``"mode": "user"`` sends with
``manager.send_to_user(user, text)``. With ``--users`` the raw replica keeps a per-user dict
of sockets (``?user=<id>`` in the URL) and SUBSCRIBEs ``raw:u:<its name>``; a user message is
a plain loop over the local sockets of the user plus one PUBLISH per other node holding one
(the sender is told which: the target's node is ``"B,C"``), sent in one pipeline.

Control endpoints (the controller drives them over loopback HTTP):

* ``GET /bench/count``: ``{"count": local sockets, "joined": local group joins done}``, and
  for the stabilizer ``"cluster"``: the clients in Redis presence, every replica's
* ``POST /bench/gc``
* ``GET /bench/collector``: ``{"seconds": CPU seconds spent in Python's cyclic collector
  since the process started, "full": full (generation 2) collections}``, from
  ``gc.callbacks``
* ``GET /bench/objects?top=K``: after a full collection, ``{"tracked": objects the cyclic
  collector tracks (what each of its full passes walks), "top": the K commonest types}``
* ``POST /bench/send`` with a JSON body ``{"mode": "direct"|"broadcast"|"group"|"user", "n": N,
  "rate": msgs/s (0: as fast as possible), "concurrency": C, "targets": [[cid, node], ...],
  "group": name, "size": bytes}``: N messages from C sender tasks, each awaiting its library
  call before the next; with a rate, message i is due at start + i/rate. Every message is
  ``b<seq>:<time.monotonic_ns()>:`` padded to `size`, stamped just before the call. Returns
  when the last call returned: ``{"t0_ns", "t1_ns", "sent", "failed"}``.

Same uvicorn settings as ``bench.servers`` (deflate off, uvicorn's pings off). Run as
``python -m bench.replicas --kind stabilizer --port P --name A --redis-url redis://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from bench import census
from bench._common import HOST, exit_with_parent, raise_nofile_limit
from bench.servers import UVICORN_OPTIONS

KINDS: Final = ("raw", "socketio", "stabilizer")
TOKEN_SECRET: Final = "bench-shared-token-secret-0123456789"

#: send(mode, target client id or group or None, target node or None, text)
Send = Callable[[str, str | None, str | None, str], Awaitable[Any]]


def stamped(seq: int, size: int) -> str:
    """A message whose text carries the time it is sent (CLOCK_MONOTONIC, ns)."""
    head = f"b{seq:08d}:{time.monotonic_ns()}:"
    return head + "x" * max(size - len(head), 0)


class Counts:
    """What /bench/count reports (stabilizer: also the clients in Redis presence)."""

    def __init__(self) -> None:
        self.joined = 0
        self.join_errors = 0
        self.count: Callable[[], int] = lambda: 0
        self.cluster: Callable[[], Awaitable[int]] | None = None


async def run_sends(send: Send, spec: dict[str, Any]) -> dict[str, Any]:
    """Send spec["n"] messages from spec["concurrency"] tasks, paced at spec["rate"]/s."""
    mode = str(spec.get("mode", "direct"))
    n = int(spec.get("n", 1))
    rate = float(spec.get("rate", 0) or 0)
    tasks = max(int(spec.get("concurrency", 1)), 1)
    size = int(spec.get("size", 64))
    group = spec.get("group")
    targets: list[list[str]] = spec.get("targets") or [[group or "", ""]]
    counter = itertools.count()
    failed = 0
    t0 = time.monotonic_ns()

    async def worker() -> None:
        nonlocal failed
        while (i := next(counter)) < n:
            if rate:
                delay = (t0 + i * 1e9 / rate - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            cid, node = targets[i % len(targets)]
            outcome = await send(mode, cid or None, node or None, stamped(i, size))
            if outcome is False:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return {"t0_ns": t0, "t1_ns": time.monotonic_ns(), "sent": n, "failed": failed}


class CollectorClock:
    """Process CPU time spent in Python's cyclic collector, and its full collections
    (a ``gc.callbacks`` entry: one process_time() read at each start and stop)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        # per generation: [collections, seconds, cyclic garbage objects freed]
        self.by_generation = [[0, 0.0, 0], [0, 0.0, 0], [0, 0.0, 0]]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
            return
        spent = time.process_time() - self._started
        self.seconds += spent
        self.full += info["generation"] == 2
        generation = self.by_generation[info["generation"]]
        generation[0] += 1
        generation[1] += spent
        generation[2] += info["collected"]


COLLECTOR: Final = CollectorClock()


def add_routes(app: FastAPI, send: Send, counts: Counts) -> None:
    @app.get("/bench/count")
    async def bench_count() -> dict[str, int]:
        reply = {"count": counts.count(), "joined": counts.joined,
                 "join_errors": counts.join_errors}
        if counts.cluster is not None:
            reply["cluster"] = await counts.cluster()
        return reply

    @app.post("/bench/gc")
    async def bench_gc() -> dict[str, Any]:
        started = time.process_time()
        collected = gc.collect()
        return {"collected": collected, "seconds": time.process_time() - started}

    @app.get("/bench/collector")
    async def bench_collector() -> dict[str, Any]:
        return {"seconds": COLLECTOR.seconds, "full": COLLECTOR.full,
                "by_generation": COLLECTOR.by_generation}

    @app.get("/bench/objects")
    async def bench_objects(top: int = 0, referents: bool = False) -> dict[str, Any]:
        """The tracked objects, by type; with `referents`, also the references a full
        collection follows from them (what it visits besides the objects themselves)."""
        gc.collect()
        tracked = gc.get_objects()
        by_type = Counter(type(o).__qualname__ for o in tracked).most_common(top)
        reply: dict[str, Any] = {"tracked": len(tracked), "top": by_type}
        if referents:
            edges: Counter[str] = Counter()
            for o in tracked:
                edges[type(o).__qualname__] += len(gc.get_referents(o))
            reply["referents"] = sum(edges.values())
            reply["top_referents"] = edges.most_common(top)
        return reply

    @app.post("/bench/send")
    async def bench_send(request: Request) -> dict[str, Any]:
        return await run_sends(send, await request.json())


# --------------------------------------------------------------------------- stabilizer


def stabilizer_app(args: argparse.Namespace) -> FastAPI:
    from stabilizer import WebSocketConfig, WebSocketConnectionManager
    from stabilizer.errors import BackendUnavailable
    from stabilizer.fastapi import lifespan, session

    overrides: dict[str, Any] = json.loads(args.stabilizer_config or "{}")
    config = WebSocketConfig(**{
        "redis_url": args.redis_url, "node_id": args.name, "heartbeat_interval": 3600.0,
        "heartbeat_timeout": 7200.0, "compression": "none", "token_secret": TOKEN_SECRET,
        "history_size": args.history, "log_level": "WARNING", **overrides,
    })
    authenticator: Any = None
    if args.jwt_secret:
        from stabilizer.auth import JWTAuthenticator

        authenticator = JWTAuthenticator(secret=args.jwt_secret)
    manager = WebSocketConnectionManager(config, authenticator=authenticator)
    app = FastAPI(lifespan=lifespan(manager, shutdown_timeout=2.0))
    counts = Counts()
    counts.count = manager.get_connection_count
    counts.cluster = manager.get_cluster_connection_count
    welcome = config.history_enabled  # resuming needs the session frame's token

    @app.websocket("/ws/{client_id}")
    async def ws(websocket: WebSocket, client_id: str) -> None:
        group = websocket.query_params.get("group")
        async with session(manager, websocket, client_id, welcome=welcome) as conn:
            if group and conn.conn is not None:
                # join_group raises BackendUnavailable when redis-py's pool is exhausted
                # (a burst of connects); retry, and count it (reported by the controller)
                for attempt in range(args.join_attempts):
                    try:
                        await manager.join_group(client_id, group)
                        break
                    except BackendUnavailable:
                        counts.join_errors += 1
                        if attempt + 1 == args.join_attempts:
                            raise
                        await asyncio.sleep(0.01 * (attempt + 1))
                counts.joined += 1
            async for _text in conn:
                pass

    @app.websocket("/v2")
    async def ws_v2(websocket: WebSocket) -> None:
        async with session(manager, websocket) as conn:
            async for _text in conn:
                pass

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            assert target is not None
            return await manager.send_to_client(target, text)
        if mode == "user":
            assert target is not None
            return await manager.send_to_user(target, text)
        if mode == "group":
            assert target is not None
            return await manager.send_to_group(target, text)
        return await manager.broadcast(text)

    add_routes(app, send, counts)
    return app


# --------------------------------------------------------------------------- socketio


def socketio_app(args: argparse.Namespace) -> Any:
    import socketio

    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(args.redis_url),
        ping_interval=3600,
        ping_timeout=7200,
        logger=False,
        engineio_logger=False,
    )
    connected: set[str] = set()
    counts = Counts()
    counts.count = lambda: len(connected)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        await sio.enter_room(sid, query.get("cid", [sid])[0])
        if "group" in query:
            await sio.enter_room(sid, query["group"][0])
            counts.joined += 1
        connected.add(sid)

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every replica listens from the start, as it would with clients of its own
        # (python-socketio otherwise starts its listener with the first connection).
        if not sio.manager_initialized:
            sio.manager_initialized = True
            sio.manager.initialize()
        yield

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            return await sio.emit("msg", text, to=target)
        if mode == "group":
            return await sio.emit("msg", text, room=target)
        return await sio.emit("msg", text)

    api = FastAPI(lifespan=lifespan)
    add_routes(api, send, counts)
    return socketio.ASGIApp(sio, other_asgi_app=api)


# --------------------------------------------------------------------------- raw floor


def raw_app(args: argparse.Namespace) -> FastAPI:
    from redis.asyncio import Redis

    name: str = args.name
    conns: dict[str, WebSocket] = {}
    groups: dict[str, dict[str, WebSocket]] = {}
    users: dict[str, dict[str, WebSocket]] = {}
    user_channel = f"raw:u:{name}".encode() if args.users else None
    counts = Counts()
    counts.count = lambda: len(conns)
    redis = Redis.from_url(args.redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    origin = name.encode()

    async def listen() -> None:
        direct = f"raw:n:{name}".encode()
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            sender, _, rest = message["data"].partition(b"\0")
            if sender == origin:
                continue
            target, _, body = rest.partition(b"\0")
            text = body.decode()
            channel = message["channel"]
            if channel == direct:
                ws = conns.get(target.decode())
                if ws is not None:
                    await ws.send_text(text)
            elif channel == b"raw:all":
                for ws in list(conns.values()):
                    await ws.send_text(text)
            elif channel == user_channel:
                for ws in list(users.get(target.decode(), {}).values()):
                    await ws.send_text(text)
            else:
                for ws in list(groups.get(target.decode(), {}).values()):
                    await ws.send_text(text)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pubsub.subscribe("raw:all", f"raw:n:{name}")
        if args.group:
            await pubsub.subscribe(f"raw:g:{args.group}")
        if user_channel is not None:
            await pubsub.subscribe(user_channel)
        task = asyncio.create_task(listen())
        yield
        task.cancel()
        await pubsub.aclose()
        await redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{client_id}")
    async def ws_endpoint(websocket: WebSocket, client_id: str) -> None:
        group = websocket.query_params.get("group")
        user = websocket.query_params.get("user")
        await websocket.accept()
        conns[client_id] = websocket
        if group:
            groups.setdefault(group, {})[client_id] = websocket
            counts.joined += 1
        if user:
            users.setdefault(user, {})[client_id] = websocket
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            conns.pop(client_id, None)
            if group:
                groups.get(group, {}).pop(client_id, None)
            if user:
                users.get(user, {}).pop(client_id, None)

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            assert target is not None
            ws = conns.get(target)
            if ws is not None:
                await ws.send_text(text)
                return True
            body = origin + b"\0" + target.encode() + b"\0" + text.encode()
            return await redis.publish(f"raw:n:{node}", body) > 0
        if mode == "user":
            assert target is not None
            local = list(users.get(target, {}).values())
            for ws in local:
                await ws.send_text(text)
            body = origin + b"\0" + target.encode() + b"\0" + text.encode()
            async with redis.pipeline(transaction=False) as pipe:
                for other in (node or "").split(","):
                    if other:
                        pipe.publish(f"raw:u:{other}", body)
                reached = await pipe.execute()
            return len(local) + sum(reached)
        if mode == "group":
            assert target is not None
            for ws in list(groups.get(target, {}).values()):
                await ws.send_text(text)
            body = origin + b"\0" + target.encode() + b"\0" + text.encode()
            return await redis.publish(f"raw:g:{target}", body)
        for ws in list(conns.values()):
            await ws.send_text(text)
        return await redis.publish("raw:all", origin + b"\0\0" + text.encode())

    add_routes(app, send, counts)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True, help="replica name (node id)")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--group", default=None, help="raw: the group channel to follow")
    parser.add_argument("--users", action="store_true",
                        help="raw: keep sockets per user (?user=) and follow raw:u:<name>")
    parser.add_argument("--jwt-secret", default=None,
                        help="stabilizer: a JWTAuthenticator (HS256) with this secret; /v2")
    parser.add_argument("--history", type=int, default=0,
                        help="stabilizer: history_size (0: history off)")
    parser.add_argument("--join-attempts", type=int, default=100,
                        help="stabilizer: attempts at join_group (1: no retry)")
    parser.add_argument("--stabilizer-config", default=None,
                        help="stabilizer: JSON object of extra WebSocketConfig fields")
    parser.add_argument("--stabilizer-path", default=None,
                        help="import the stabilizer package from this folder (a snapshot)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--census", action="store_true",
                        help="count the objects promoted to the oldest generation, by type "
                             "(GET /bench/promoted; see bench.census)")
    args = parser.parse_args()
    raise_nofile_limit()
    exit_with_parent(args.max_seconds)
    gc.callbacks.append(COLLECTOR)
    if args.stabilizer_path:
        sys.path.insert(0, args.stabilizer_path)
    builders = {"raw": raw_app, "socketio": socketio_app, "stabilizer": stabilizer_app}
    app = builders[args.kind](args)
    if args.census:
        census.install(app)
    if "stabilizer" in sys.modules:
        print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}", file=sys.stderr,
              flush=True)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
