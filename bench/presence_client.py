"""The clients of ``bench.presence``: many protocol v2 clients that follow one channel's
presence, and an observer that keeps the presence it was told.

Raw asyncio protocols, as in ``bench.loadgen``: a client is one small object that offers
``stabilizer.v2``, sends ``{"type": "connect", "device": <its id>}``, and on the ``session``
frame ``{"type": "subscribe", "id": 1, "channel": <group>, "presence": true, "params":
{"gen": g}}`` (the observer, and clients connected with ``listed`` false, send no
``params``: they follow without being listed). It is ready at the subscribe's ``reply``;
a reply ``unavailable`` (the server could not reach Redis within ``op_timeout``) is
counted and the subscribe sent again after a jittered pause, as an application would (up
to ``MAX_REFUSALS`` times). From then on it counts what it receives: frames and bytes, and
of those the ``presence_state`` and ``presence_diff`` frames. Nothing is parsed but the
frame type, except by the observer, which applies every ``presence_state`` and
``presence_diff`` to its copy of the presence (``client_id`` -> ``gen``), notes each diff's
size and arrival time, and the moment its copy is *exact*: every one of the n clients
listed with the generation armed, and nobody else.

Driven like ``bench.loadgen`` (whose ``serve`` loop it reuses): JSON lines on stdin, one
reply each on stdout. Commands: ``connect`` (port, ids, gen, group, observer, listed,
concurrency); ``storm`` (gen, concurrency): drop every client (``transport.abort()``: no
close frame, as a lost network would) and reconnect them all at once with generation gen;
``stats``; ``arm`` (gen, n) and ``wait`` (timeout, quiet): the observer's exactness;
``close``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import time
from typing import Any, Final

from bench._common import HOST, raise_nofile_limit
from bench.loadgen import Client, Counters, Generator, serve

SUBPROTOCOL: Final = "stabilizer.v2"
MAX_REFUSALS: Final = 20  # "unavailable" replies to one client's subscribe before it fails


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame (the zero key: the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, 0x80 | size)) + b"\x00\x00\x00\x00" + payload
    return bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big") + b"\x00\x00\x00\x00" + payload


class PresenceCounters(Counters):
    """Counters plus the presence frames."""

    __slots__ = ("diff_bytes", "diffs", "frames", "refused", "state_bytes", "states")

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0  # subscribes answered "unavailable" (and sent again)
        self.frames = 0
        self.diffs = 0
        self.diff_bytes = 0
        self.states = 0
        self.state_bytes = 0


class Observed:
    """The observer's copy of the presence and what it noted since it was armed."""

    def __init__(self) -> None:
        self.gens: dict[str, Any] = {}  # client_id -> the "gen" of its metadata
        self.target: Any = None
        self.expected = -1
        self.matching = 0  # entries whose gen is the target
        self.diffs: list[tuple[float, int]] = []  # (arrival, bytes) since armed
        self.exact_at: float | None = None
        self.exact = asyncio.Event()
        self.armed_at = time.monotonic()

    def arm(self, gen: Any, n: int) -> None:
        self.target, self.expected, self.armed_at = gen, n, time.monotonic()
        self.matching = sum(1 for g in self.gens.values() if g == gen)
        self.diffs, self.exact_at = [], None
        self.exact.clear()
        self._check()

    async def wait(self, timeout: float, quiet: float) -> None:
        """Until the copy is exact, `timeout` passes, or no diff came for `quiet` seconds
        (since it was armed, or since the last one)."""
        deadline = time.monotonic() + timeout
        while self.exact_at is None:
            last = self.diffs[-1][0] if self.diffs else self.armed_at
            now = time.monotonic()
            if now >= deadline or now - last >= quiet:
                return
            try:
                async with asyncio.timeout(min(deadline - now, 0.1)):
                    await self.exact.wait()
            except TimeoutError:
                pass

    def _set(self, client_id: str, gen: Any) -> None:
        self._drop(client_id)
        self.gens[client_id] = gen
        self.matching += gen == self.target

    def _drop(self, client_id: str) -> None:
        if client_id in self.gens:
            self.matching -= self.gens.pop(client_id) == self.target

    def _check(self) -> None:
        if (self.exact_at is None and self.matching == self.expected
                and len(self.gens) == self.expected):
            self.exact_at = time.monotonic()
            self.exact.set()

    def apply(self, raw: bytes) -> None:
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "presence_state":
            self.gens, self.matching = {}, 0
            for items in frame["presence"].values():
                for item in items:
                    self._set(item["client_id"], item["meta"].get("gen"))
        elif kind == "presence_diff":
            self.diffs.append((time.monotonic(), len(raw)))
            for items in frame["leaves"].values():
                for item in items:
                    self._drop(item["client_id"])
            for items in frame["joins"].values():
                for item in items:
                    self._set(item["client_id"], item["meta"].get("gen"))
        else:
            return
        self._check()


class V2Client(Client):
    """One v2 client following the presence of one channel."""

    __slots__ = ("observed", "refusals", "subscribe", "subscribed")

    def __init__(self, request: bytes, subscribe: bytes, counters: PresenceCounters,
                 ready: asyncio.Future[None], observed: Observed | None) -> None:
        super().__init__(request, "ws", counters, ready)  # ws: `ready` resolves at the 101
        self.subscribe = subscribe
        self.observed = observed
        self.subscribed = False
        self.refusals = 0

    def _message(self, buf: bytes, start: int, end: int) -> None:
        counters = self.counters
        assert isinstance(counters, PresenceCounters)
        head = buf[start:start + 24]
        if not self.subscribed:
            if head.startswith(b'{"type":"session"'):
                self._write(self.subscribe)
            elif head.startswith(b'{"type":"reply"'):
                reply = buf[start:end]
                if b'"unavailable"' in reply and self.refusals < MAX_REFUSALS:
                    # the server could not reach Redis in time: send it again, as an
                    # application would, after a jittered pause
                    self.refusals += 1
                    counters.refused += 1
                    delay = random.uniform(0.05, 0.25) * self.refusals
                    asyncio.get_running_loop().call_later(delay, self._write, self.subscribe)
                elif b'"error"' in reply:
                    self._fail(f"subscribe refused: {reply[:200]!r}")
                else:
                    self.subscribed = True
                    if not self.ready.done():
                        self.ready.set_result(None)
            return
        size = end - start
        counters.frames += 1
        if head.startswith(b'{"type":"presence_diff"'):
            counters.diffs += 1
            counters.diff_bytes += size
        elif head.startswith(b'{"type":"presence_state"'):
            counters.states += 1
            counters.state_bytes += size
        if self.observed is not None:
            self.observed.apply(buf[start:end])


class PresenceGenerator(Generator):
    """The v2 clients of this process and the commands of the controller."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: Observed | None = None
        self.ids: list[str] = []
        self.port = 0
        self.group = "room"
        self.listed = True  # subscribes with a gen: listed in the presence

    def make_counters(self) -> Counters:
        return PresenceCounters()

    async def open_all(self, ids: list[str], gen: Any, concurrency: int,
                       timeout: float) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one(client_id: str) -> bool:
            async with gate:
                for attempt in range(3):
                    try:
                        await self._open_v2(client_id, gen, timeout)
                        return True
                    except (OSError, TimeoutError) as exc:
                        if attempt == 2 and len(errors) < 5:
                            errors.append(f"{client_id}: {type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.05 * (attempt + 1))
                return False

        results = await asyncio.gather(*(one(client_id) for client_id in ids))
        return {"connected": sum(results), "errors": errors}

    async def _open_v2(self, client_id: str, gen: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (f"GET /v2 HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode("ascii")
        connect = text_frame(json.dumps({"type": "connect", "device": client_id}).encode())
        subscribe: dict[str, Any] = {"type": "subscribe", "id": 1, "channel": self.group,
                                     "presence": True}
        if self.listed:
            subscribe["params"] = {"gen": gen}
        assert isinstance(self.counters, PresenceCounters)
        handshake: asyncio.Future[None] = loop.create_future()
        client = V2Client(request, text_frame(json.dumps(subscribe).encode()), self.counters,
                          handshake, self.observed)
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: client, HOST, self.port)
            try:
                await handshake
                client.ready = ready
                client._write(connect)
                await ready
            except BaseException:
                if client.transport is not None:
                    client.transport.abort()
                raise
        self.clients.append(client)

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.port = int(cmd["port"])
        self.group = str(cmd.get("group", "room"))
        if cmd.get("observer"):
            self.observed = Observed()
        self.listed = bool(cmd.get("listed", True)) and self.observed is None
        self.ids = [str(client_id) for client_id in cmd["ids"]]
        started = time.monotonic()
        reply = await self.open_all(self.ids, cmd.get("gen"), int(cmd.get("concurrency", 64)),
                                    float(cmd.get("timeout", 30.0)))
        return {**reply, "seconds": time.monotonic() - started}

    async def storm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        for client in self.clients:
            client.is_open = False  # dropped on purpose: not counted as lost
            if client.transport is not None:
                client.transport.abort()
        self.clients.clear()
        reply = await self.open_all(self.ids, cmd.get("gen"), int(cmd.get("concurrency", 1000)),
                                    float(cmd.get("timeout", 60.0)))
        return {**reply, "t0": started, "t_done": time.monotonic()}

    def stats(self, light: bool = False) -> dict[str, Any]:
        counters = self.counters
        assert isinstance(counters, PresenceCounters)
        return {"frames": counters.frames, "bytes": counters.bytes, "diffs": counters.diffs,
                "diff_bytes": counters.diff_bytes, "states": counters.states,
                "state_bytes": counters.state_bytes, "refused": counters.refused,
                "lost": counters.lost,
                "closed": counters.closed, "open": len(self.clients)}

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if name == "storm":
            return await self.storm(cmd)
        observed = self.observed
        if observed is None:
            return {"error": f"{name}: not the observer"}
        if name == "arm":
            observed.arm(cmd["gen"], int(cmd["n"]))
            return {"armed": True, "listed": len(observed.gens)}
        if name == "wait":
            await observed.wait(float(cmd.get("timeout", 60.0)), float(cmd.get("quiet", 5.0)))
            return {"exact": observed.exact_at is not None, "exact_at": observed.exact_at,
                    "listed": len(observed.gens), "matching": observed.matching,
                    "diffs": observed.diffs}
        return await super().command(name, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, PresenceGenerator()))


if __name__ == "__main__":
    main()
