"""The servers of ``bench.acks``: direct sends to the one bench client, plain and
acknowledged, three ways, each run by uvicorn alone (``bench.rpc_servers``' settings).

Kinds, each a ``Target`` the routes below drive:

* ``raw``: a plain FastAPI endpoint ``/acks``; a plain send is ``{"data": m}``, an
  acknowledged one ``{"id", "data": m}``, which the client answers with ``{"ack": id}``;
  the endpoint's receive loop settles a future per id (the send waits for it under a
  timeout): the floor.
* ``stabilizer``: a v2 endpoint ``/v2`` (``session(manager, websocket)``, anonymous,
  heartbeat off, the embedded backend); ``manager.send_to_client(cid, m)`` and
  ``manager.send_to_client(cid, m, ack=True, timeout=...)``.
* ``socketio``: python-socketio's AsyncServer (ASGI); ``sio.emit("oneway", m, to=sid)``
  and ``sio.call("acked", m, to=sid, timeout=...)``: an emit with a callback, returning
  what the client's handler returned (its ack).

Every kind serves ``bench.servers``' control routes and these, against its one client:

* ``POST /bench/oneway?n=N&gap_ms=G``: N plain sends, G ms apart (an ``asyncio.sleep``);
* ``POST /bench/acked?n=N``: N acknowledged sends one after the other; returns each round
  trip in µs (from before the send call to its return);
* ``POST /bench/acked_concurrent?n=N&concurrency=C``: N acknowledged sends, C in flight at
  any time (C tasks under ``asyncio.gather``, each sending in a loop); returns the wall
  seconds.

Every message is ``{"seq", "t"}``, t the sender's ``time.monotonic_ns()`` just before the
send call. Every acknowledged send must return True within ``ACK_TIMEOUT``; the routes count
those that did not (and the first error). Run as ``python -m bench.acks_servers --kind raw
--port 8000``; the process stops by itself when its stdin closes or its lifetime ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any, Final, Protocol

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench.rpc_client import Failures
from bench.rpc_servers import no_broadcast, serve_kinds, socketio_server, stabilizer_node
from bench.servers import add_bench_routes

KINDS: Final = ("raw", "stabilizer", "socketio")
ACK_TIMEOUT: Final = 10.0


class Target(Protocol):
    """The one connected bench client, as one library reaches it."""

    async def send(self, message: dict[str, int]) -> bool: ...

    async def send_acked(self, message: dict[str, int]) -> bool: ...


def stamped(seq: int) -> dict[str, int]:
    return {"seq": seq, "t": time.monotonic_ns()}


async def check(target: Target, seq: int, failures: Failures) -> None:
    """One acknowledged send; a failure is counted, never raised."""
    try:
        acked = await target.send_acked(stamped(seq))
    except Exception as exc:  # counted and reported: a failed send must not end the run
        failures.add(repr(exc))
        return
    if acked is not True:
        failures.add(f"send {seq}: {acked!r}, expected True")


def add_ack_routes(app: FastAPI, target: Target) -> None:
    """The routes that run the sends, identical for every kind."""

    @app.post("/bench/oneway")
    async def oneway(n: int, gap_ms: float = 1.0) -> dict[str, Any]:
        failures = Failures()
        for seq in range(n):
            if not await target.send(stamped(seq)):
                failures.add(f"send {seq} reached nobody")
            await asyncio.sleep(gap_ms / 1e3)
        return failures.as_dict()

    @app.post("/bench/acked")
    async def acked(n: int) -> dict[str, Any]:
        failures = Failures()
        round_trips: list[int] = []
        for seq in range(n):
            started = time.perf_counter_ns()
            await check(target, seq, failures)
            round_trips.append((time.perf_counter_ns() - started) // 1000)
        return {"round_trip_us": round_trips, **failures.as_dict()}

    @app.post("/bench/acked_concurrent")
    async def acked_concurrent(n: int, concurrency: int) -> dict[str, Any]:
        failures = Failures()
        seqs = iter(range(n))

        async def worker() -> None:
            for seq in seqs:  # shared: each send is made by whichever worker is free
                await check(target, seq, failures)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"wall_s": time.perf_counter() - started, **failures.as_dict()}


# --------------------------------------------------------------------------- raw


class RawTarget:
    """A plain socket: a future per acknowledged id, settled by the endpoint's loop."""

    def __init__(self) -> None:
        self.websocket: WebSocket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[None]] = {}

    async def send(self, message: dict[str, int]) -> bool:
        assert self.websocket is not None, "no client"
        await self.websocket.send_text(json.dumps({"data": message}, separators=(",", ":")))
        return True

    async def send_acked(self, message: dict[str, int]) -> bool:
        assert self.websocket is not None, "no client"
        ack_id = next(self._ids)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ack_id] = answer
        try:
            await self.websocket.send_text(json.dumps({"id": ack_id, "data": message},
                                                      separators=(",", ":")))
            async with asyncio.timeout(ACK_TIMEOUT):
                await answer
        finally:
            self._waiting.pop(ack_id, None)
        return True

    def settle(self, text: str) -> None:
        answer = self._waiting.get(json.loads(text)["ack"])
        if answer is not None and not answer.done():
            answer.set_result(None)


def raw_app() -> FastAPI:
    target = RawTarget()
    count = [0]
    app = FastAPI()

    @app.websocket("/acks")
    async def acks(websocket: WebSocket) -> None:
        await websocket.accept()
        target.websocket = websocket
        count[0] += 1
        try:
            while True:
                target.settle(await websocket.receive_text())
        except WebSocketDisconnect:
            pass
        finally:
            count[0] -= 1
            target.websocket = None

    add_bench_routes(app, no_broadcast, lambda: count[0])
    add_ack_routes(app, target)
    return app


# --------------------------------------------------------------------------- stabilizer


def stabilizer_app(overrides: dict[str, Any] | None) -> FastAPI:
    from stabilizer.fastapi import session

    manager, app = stabilizer_node(overrides)
    clients: list[str] = []

    class StabilizerTarget:
        async def send(self, message: dict[str, int]) -> bool:
            return await manager.send_to_client(clients[0], message)

        async def send_acked(self, message: dict[str, int]) -> bool:
            return await manager.send_to_client(clients[0], message, ack=True,
                                                timeout=ACK_TIMEOUT)

    @app.websocket("/v2")
    async def v2(websocket: WebSocket) -> None:
        async with session(manager, websocket) as conn:
            assert conn.client_id is not None  # named by the handshake
            clients.append(conn.client_id)
            try:
                async for _message in conn:  # the client sends acknowledgements only
                    pass
            finally:
                clients.remove(conn.client_id)

    add_bench_routes(app, no_broadcast, manager.get_connection_count)
    add_ack_routes(app, StabilizerTarget())
    return app


# --------------------------------------------------------------------------- socketio


def socketio_app() -> Any:
    import socketio

    sio, connected = socketio_server()

    class SocketIOTarget:
        async def send(self, message: dict[str, int]) -> bool:
            await sio.emit("oneway", message, to=next(iter(connected)))
            return True

        async def send_acked(self, message: dict[str, int]) -> bool:
            # call() is an emit with a callback that waits for it: its value is what the
            # client's handler returned. One packet per message (no binary): safe to run
            # concurrently on one connection.
            result: bool = await sio.call("acked", message, to=next(iter(connected)),
                                          timeout=ACK_TIMEOUT)
            return result

    api = FastAPI()
    add_bench_routes(api, no_broadcast, lambda: len(connected))
    add_ack_routes(api, SocketIOTarget())
    return socketio.ASGIApp(sio, other_asgi_app=api)


def build(kind: str, stabilizer_config: dict[str, Any] | None) -> Any:
    """The ASGI app of `kind`."""
    if kind == "raw":
        return raw_app()
    if kind == "stabilizer":
        return stabilizer_app(stabilizer_config)
    return socketio_app()


def main() -> None:
    serve_kinds(KINDS, build, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
