"""A worker process that emits to clients of a replica it is not: ``bench.emitter``'s sender.

It holds no socket and serves no HTTP; it stands for a Celery or arq worker. The controller
talks JSON lines on stdin/stdout, as to a load generator (``bench.loadgen.serve``):

* ``{"cmd": "open", "kind": K, "redis_url": U, "stabilizer_path": P | null}``: make the
  emitter of kind K (below); returns ``{"opened": K}``;
* ``{"cmd": "send", ...}``: ``bench.replicas.run_sends`` with this process's emitter: N
  stamped messages (``b<seq>:<monotonic_ns>:...``) from C sender tasks, each awaiting its
  call before its next, optionally paced; returns ``{"t0_ns", "t1_ns", "sent", "failed"}``.

Kinds, each reaching the replica of the same kind in ``bench.replicas``:

* ``stabilizer``: ``stabilizer.Emitter(redis_url)`` with the replica's defaults (namespace,
  one presence bucket, history off): ``send_to_client(cid, text)`` (one EVALSHA: the
  owner's node from presence, PUBLISH to it), ``broadcast(text)``;
* ``socketio``: python-socketio's ``AsyncRedisManager(redis_url, write_only=True)``:
  ``emit("msg", text, room=cid)`` (every client is in a room named after its id),
  ``emit("msg", text)``; one PUBLISH of JSON on the ``socketio`` channel, which every
  replica receives and filters;
* ``raw``: redis-py ``PUBLISH raw:n:<node> "W\\0<cid>\\0<text>"`` straight to the channel of
  the replica holding the client (the worker is told which: no lookup), ``PUBLISH raw:all``
  for a broadcast; the raw replica forwards with ``await ws.send_text(text)``.

Run as ``python -m bench.emitter_worker``; it exits on ``quit``, when stdin closes, or
after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Final

from bench._common import raise_nofile_limit
from bench.loadgen import Generator, serve
from bench.replicas import Send, run_sends

KINDS: Final = ("raw", "socketio", "stabilizer")
ORIGIN: Final = b"W"  # the raw replicas ignore only their own name


def stabilizer_send(redis_url: str) -> tuple[Send, Any]:
    from stabilizer import Emitter

    emitter = Emitter(redis_url, log_level="WARNING")

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            assert target is not None
            return await emitter.send_to_client(target, text)
        return await emitter.broadcast(text)

    return send, emitter.aclose


def socketio_send(redis_url: str) -> tuple[Send, Any]:
    import socketio

    manager = socketio.AsyncRedisManager(redis_url, write_only=True)

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            return await manager.emit("msg", text, room=target)
        return await manager.emit("msg", text)

    async def close() -> None:
        if manager.redis is not None:
            await manager.redis.aclose()

    return send, close


def raw_send(redis_url: str) -> tuple[Send, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)

    async def send(mode: str, target: str | None, node: str | None, text: str) -> Any:
        if mode == "direct":
            assert target is not None
            body = ORIGIN + b"\0" + target.encode() + b"\0" + text.encode()
            return await redis.publish(f"raw:n:{node}", body) > 0
        return await redis.publish("raw:all", ORIGIN + b"\0\0" + text.encode())

    return send, redis.aclose


class EmitterWorker(Generator):
    """No clients: answers ``open`` and ``send`` (``bench.loadgen`` answers the rest)."""

    def __init__(self) -> None:
        super().__init__()
        self._send: Send | None = None
        self._close: Any = None

    async def command(self, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if name == "open":
            kind = str(cmd["kind"])
            if cmd.get("stabilizer_path"):
                sys.path.insert(0, str(cmd["stabilizer_path"]))
            builders = {"raw": raw_send, "socketio": socketio_send,
                        "stabilizer": stabilizer_send}
            self._send, self._close = builders[kind](str(cmd["redis_url"]))
            if "stabilizer" in sys.modules:
                print(f"stabilizer imported from {sys.modules['stabilizer'].__file__}",
                      file=sys.stderr, flush=True)
            return {"opened": kind}
        if name == "send":
            if self._send is None:
                return {"error": "send before open"}
            return await run_sends(self._send, cmd)
        return await super().command(name, cmd)

    async def close(self) -> dict[str, Any]:
        if self._close is not None:
            close, self._close = self._close, None
            await close()
        return await super().close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="exit by itself after this long (default 1800)")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, EmitterWorker()))


if __name__ == "__main__":
    main()
