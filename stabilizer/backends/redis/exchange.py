"""EVALSHA calls written straight to one pooled connection, without redis-py's pipeline.

redis-py packs each argument of a command in Python (several isinstance checks and a
bytes join per argument), and a connect's REGISTER carries over twenty arguments. Here the
calls of a batch are packed by hiredis, in C, where it is installed (the `redis` extra
installs it): `python -m bench.batch` measures 0.58x of redis-py's CPU per call. They go
out as one write; the replies are read back in order, and an error reply (NOSCRIPT
included) becomes that call's result, so one failed call does not hide the others'
replies. A call that cannot be packed (text UTF-8 cannot encode, a value Redis has no type
for) is not sent and fails alone.

Nothing is retried: a connection that fails mid-batch is dropped, and the caller learns
that the calls may have run. The history's sequencing script (RedisCore.run_once) goes the
same way, alone, on a pooled() connection: it tells "no connection could be had" (it did
not run) from a failure after it was sent (it may have run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, ResponseError

try:
    from hiredis import pack_command as _c_pack
    C_PACKING = True
except ImportError:  # the plain `redis` package: redis-py packs
    C_PACKING = False

Script = tuple[Sequence[Any], Sequence[Any]]
#: a call as its keys and arguments, or packed ahead (its bytes, or why it cannot be packed)
Call = Script | bytes | Exception


def _pack(sha: str, keys: Sequence[Any], args: Sequence[Any],
          fallback: Callable[..., list[bytes]]) -> bytes:
    command = ("EVALSHA", sha, len(keys), *keys, *args)
    if not C_PACKING:
        return b"".join(fallback(*command))
    try:
        wire: bytes = _c_pack(command)
    except TypeError as exc:
        raise DataError(str(exc)) from exc
    return wire


def unpackable(keys: Sequence[Any], args: Sequence[Any]) -> Exception | None:
    """Why a call of these keys and arguments could not be packed, or None: a value that
    is not str, bytes, int or float, or text UTF-8 cannot encode. (The Cluster's pipeline
    packs a master's calls together: one such call would fail them all.)"""
    for value in (*keys, *args):
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return exc
        elif isinstance(value, bool) or not isinstance(value, bytes | int | float):
            return DataError(f"cannot send {type(value).__name__} to Redis")
    return None


def packed_ahead(sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Call:
    """The EVALSHA call as packed() would pack it, when hiredis can pack it now (a call
    waiting for its round trip then keeps bytes, no work for the cyclic collector, instead
    of its lists); without hiredis the keys and arguments, packed when sent."""
    if not C_PACKING:
        return keys, args
    try:
        return _pack(sha, keys, args, _unused)
    except (DataError, UnicodeEncodeError) as exc:
        return exc


def _unused(*_: Any) -> list[bytes]:
    raise AssertionError("hiredis packs")


def packed(sha: str, calls: Iterable[Call],
           fallback: Callable[..., list[bytes]]) -> list[bytes | Exception]:
    """Each EVALSHA call of `calls` (keys, args) as protocol bytes (by hiredis, or by
    `fallback`, redis-py's packer, without it), or in its place the error that packing it
    raised (an argument that is not str, bytes, int or float; text with a lone surrogate,
    which UTF-8 cannot encode), so that one bad call fails alone. A call packed ahead
    (packed_ahead) is taken as it is."""
    out: list[bytes | Exception] = []
    for call in calls:
        if isinstance(call, bytes | Exception):
            out.append(call)
            continue
        keys, args = call
        try:
            out.append(_pack(sha, keys, args, fallback))
        except (DataError, UnicodeEncodeError) as exc:
            out.append(exc)
    return out


@asynccontextmanager
async def pooled(client: Redis) -> AsyncIterator[Connection]:
    """A connection of `client`'s pool, connected and checked (one the server closed is
    replaced when it is taken), for the block; nothing is sent on it yet when the block
    begins. It goes back to the pool after the block, or, if the block raised (a reply may
    be left unread), it is dropped first.

    Raises:
        redis.exceptions.RedisError, OSError: no connection could be had (nothing sent).
    """
    pool = client.connection_pool
    conn: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False
    try:
        yield conn
        clean = True
    finally:
        if not clean:
            await conn.disconnect(nowait=True)
        await pool.release(conn)


async def evalsha_on(conn: Connection, sha: str, calls: Iterable[Call]) -> list[Any]:
    """Run the EVALSHA calls of `calls` on `conn` in one write; return each call's reply,
    or in its place its ResponseError (e.g. NoScriptError) or the error that kept it from
    being packed (it was not sent).

    Raises:
        redis.exceptions.RedisError, OSError: the connection failed; any of the calls may
            have run.
    """
    commands = packed(sha, calls, conn.pack_command)
    sent = [command for command in commands if not isinstance(command, Exception)]
    if sent:
        await conn.send_packed_command(sent)
    replies: list[Any] = []
    for command in commands:
        if isinstance(command, Exception):
            replies.append(command)
            continue
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:  # an error reply: the stream stays in step
            replies.append(exc)
    return replies


async def evalsha_batch(client: Redis, sha: str, calls: Iterable[Call]) -> list[Any]:
    """evalsha_on() on a pooled() connection of `client`.

    Raises:
        redis.exceptions.RedisError, OSError: the connection failed; any of the calls may
            have run. The connection is dropped, not returned to the pool half-read.
    """
    async with pooled(client) as conn:
        return await evalsha_on(conn, sha, calls)
