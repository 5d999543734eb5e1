"""The client of ``bench.rpc``: one connection of one library, making calls of ``add``.

Kinds, each the library's own client:

* ``raw``: the ``websockets`` library (default settings), a reader task that settles a
  future per id; a call sends ``{"id", "method": "add", "params"}``, awaits ``{"id",
  "result"}``;
* ``stabilizer``: ``stabilizer.client.connect(url, protocol=2)`` and ``conn.rpc("add",
  params)`` (which is built on ``websockets`` too);
* ``socketio``: ``socketio.AsyncClient`` over the WebSocket transport only (no long-polling
  first), ``call("add", params)``: an event with an ack.

Driven like ``bench.loadgen`` (whose ``serve`` loop it reuses): JSON lines on stdin, one
reply each on stdout. Commands:

* ``connect`` (kind, port, stabilizer_path): open the one client;
* ``serial`` (n): n calls one after the other; returns each round trip in µs;
* ``concurrent`` (n, concurrency): n calls, `concurrency` of them in flight at any time
  (that many tasks, each calling in a loop); returns the wall seconds;
* ``close``, ``quit``.

``serial`` and ``concurrent`` also return this process's CPU seconds over the calls and the
number of calls that failed or returned a wrong sum (the first error's text too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

from bench._common import HOST, raise_nofile_limit
from bench.loadgen import Generator, serve

CALL_TIMEOUT: Final = 30.0


class Opener(Protocol):
    async def open(self, port: int) -> None: ...

    async def aclose(self) -> None: ...


class Caller(Opener, Protocol):
    async def call(self, params: dict[str, int]) -> Any: ...


C = TypeVar("C", bound=Opener)


class RawCaller:
    """A minimal RPC client over the websockets library: the floor."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        from websockets.asyncio.client import connect

        self._ws = await connect(f"ws://{HOST}:{port}/rpc")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self._ws:
            reply = json.loads(text)
            future = self._waiting.pop(reply["id"], None)
            if future is not None and not future.done():
                future.set_result(reply["result"])

    async def call(self, params: dict[str, int]) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            await self._ws.send(json.dumps({"id": call_id, "method": "add", "params": params},
                                           separators=(",", ":")))
            async with asyncio.timeout(CALL_TIMEOUT):
                return await future
        finally:
            self._waiting.pop(call_id, None)

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class StabilizerCaller:
    """stabilizer's Python client, protocol v2."""

    def __init__(self) -> None:
        self._conn: Any = None

    async def open(self, port: int) -> None:
        from stabilizer.client import connect

        self._conn = connect(f"ws://{HOST}:{port}/v2", protocol=2)
        await self._conn.start()

    async def call(self, params: dict[str, int]) -> Any:
        return await self._conn.rpc("add", params, timeout=CALL_TIMEOUT)

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.aclose()


class SocketIOCaller:
    """python-socketio's AsyncClient; ``call`` is an emit that waits for the ack."""

    def __init__(self) -> None:
        self._sio: Any = None

    async def open(self, port: int) -> None:
        import socketio

        self._sio = socketio.AsyncClient(reconnection=False)
        await self._sio.connect(f"http://{HOST}:{port}", transports=["websocket"])

    async def call(self, params: dict[str, int]) -> Any:
        return await self._sio.call("add", params, timeout=CALL_TIMEOUT)

    async def aclose(self) -> None:
        if self._sio is not None:
            await self._sio.disconnect()


CALLERS: Final[dict[str, Callable[[], Caller]]] = {
    "raw": RawCaller, "stabilizer": StabilizerCaller, "socketio": SocketIOCaller}


class Failures:
    """Calls that raised or returned a wrong sum."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    async def check(self, caller: Caller, seq: int) -> None:
        try:
            result = await caller.call({"a": seq, "b": 1})
        except Exception as exc:  # counted and reported: a failed call must not end the run
            self.add(repr(exc))
            return
        if result != seq + 1:
            self.add(f"call {seq}: {result!r}, expected {seq + 1}")

    def add(self, text: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = text[:300]

    def as_dict(self) -> dict[str, Any]:
        return {"failed": self.count, "first_error": self.first}


class OneClient(Generator, Generic[C]):
    """One client of one library, opened by ``connect`` and closed by ``close``."""

    def __init__(self) -> None:
        super().__init__()
        self.client: C | None = None

    def make_client(self, kind: str) -> C:
        """A client of `kind`, not open yet."""
        raise NotImplementedError

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("stabilizer_path"):
            sys.path.insert(0, str(cmd["stabilizer_path"]))  # the run's snapshot
        client = self.make_client(str(cmd["kind"]))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(float(cmd.get("timeout", 30.0))):
                await client.open(int(cmd["port"]))
        except Exception as exc:  # reported to the controller, which fails the run
            return {"connected": 0, "errors": [repr(exc)]}
        self.client = client
        return {"connected": 1, "errors": [], "connect_ms": (time.perf_counter() - started)
                * 1e3}

    async def close(self) -> dict[str, Any]:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        return {"closed": 0 if client is None else 1}


class RPCGenerator(OneClient[Caller]):
    """One client, and the commands that time its calls."""

    def make_client(self, kind: str) -> Caller:
        return CALLERS[kind]()

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.client is None:
            return {"error": "not connected"}
        if name == "serial":
            return await self._serial(self.client, int(cmd["n"]))
        if name == "concurrent":
            return await self._concurrent(self.client, int(cmd["n"]), int(cmd["concurrency"]))
        return await super().command(name, cmd)

    @staticmethod
    async def _serial(caller: Caller, n: int) -> dict[str, Any]:
        failures = Failures()
        round_trips: list[int] = []
        cpu0 = time.process_time()
        for seq in range(n):
            started = time.perf_counter_ns()
            await failures.check(caller, seq)
            round_trips.append((time.perf_counter_ns() - started) // 1000)
        return {"round_trip_us": round_trips, "cpu_s": time.process_time() - cpu0,
                **failures.as_dict()}

    @staticmethod
    async def _concurrent(caller: Caller, n: int, concurrency: int) -> dict[str, Any]:
        failures = Failures()
        seqs = iter(range(n))

        async def worker() -> None:
            for seq in seqs:  # shared: each call is made by whichever worker is free
                await failures.check(caller, seq)

        cpu0 = time.process_time()
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(worker())
        return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu0,
                **failures.as_dict()}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, RPCGenerator()))


if __name__ == "__main__":
    main()
