"""EVALSHA calls written straight to one pooled connection, without redis-py's pipeline.

redis-py packs each argument of a command in Python (several isinstance checks and a
bytes join per argument). A connect's REGISTER carries over twenty arguments, so in a
reconnect storm that packing was about a sixth of the replica's own CPU per connect.
Here the calls of a batch are packed by hiredis, in C, where it is installed (the `redis`
extra installs it), as one write; the replies are read back in order, and an error reply
(NOSCRIPT included) becomes that call's result, so one failed call does not hide the
others' replies.

Nothing is retried: a connection that fails mid-batch is dropped, and the caller learns
that the calls may have run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import DataError, ResponseError

try:
    from hiredis import pack_command as _c_pack
    C_PACKING = True
except ImportError:  # the plain `redis` package: redis-py packs
    C_PACKING = False

Script = tuple[Sequence[Any], Sequence[Any]]


def packed(sha: str, calls: Sequence[Script]) -> list[bytes] | None:
    """The EVALSHA commands of `calls` (keys, args) as protocol bytes, or None when hiredis
    is not installed.

    Raises:
        DataError: an argument hiredis cannot pack (it packs str, bytes, int and float).
    """
    if not C_PACKING:
        return None
    try:
        return [_c_pack(("EVALSHA", sha, len(keys), *keys, *args)) for keys, args in calls]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


async def evalsha_batch(client: Redis, sha: str, calls: Sequence[Script]) -> list[Any]:
    """Run the EVALSHA calls of `calls` on one pooled connection in one write; return each
    call's reply, or its ResponseError (e.g. NoScriptError) in its place.

    Raises:
        redis.exceptions.RedisError, OSError: the connection failed; any of the calls may
            have run. The connection is dropped, not returned to the pool half-read.
    """
    pool = client.connection_pool
    # connected and checked (a connection the server closed is replaced here)
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False
    try:
        data = packed(sha, calls)
        if data is None:
            data = conn.pack_commands(
                [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
        await conn.send_packed_command(data)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # an error reply: the stream stays in step
                replies.append(exc)
        clean = True
        return replies
    finally:
        if not clean:
            await conn.disconnect(nowait=True)
        await pool.release(conn)
