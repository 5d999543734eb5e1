"""Inspect a cluster's state in Redis: ``python -m stabilizer --redis-url URL COMMAND``.

Commands: ``nodes`` (live nodes, deadlines, client counts), ``clients [--limit N]``,
``groups``, ``locate ID``, ``stats``. Tables by default, ``--json`` for machines. Exit
status: 0 done, 1 ``locate`` found no such client, 2 bad arguments, 3 Redis unreachable.
Reads only; needs no application code.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, TextIO, TypeVar, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stabilizer.backends.base import Presence
from stabilizer.backends.redis import RedisBackend
from stabilizer.config import WebSocketConfig
from stabilizer.errors import BackendUnavailable, ConfigError

PROG: Final = "python -m stabilizer"
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
T = TypeVar("T")
Row = dict[str, Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Report bad arguments on one line (argparse would print the usage first)."""
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {PROG} --help)\n")


class Inspector:
    """Read-only queries over one namespace; every Redis call is bounded by `timeout`."""

    def __init__(self, backend: RedisBackend, args: argparse.Namespace, out: TextIO) -> None:
        self.backend, self.client, self.out = backend, backend.client, out
        self.timeout, self.buckets = args.timeout, args.presence_buckets

    async def ask(self, awaitable: Awaitable[T]) -> T:
        """Await one Redis command; raise BackendUnavailable when it fails or times out."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(str(exc) or f"no answer within {self.timeout:g}s") from exc

    async def live_nodes(self) -> list[Row]:
        """Nodes whose deadline (Redis clock) has not passed, with their client counts."""
        seconds, micros = await self.ask(self.client.time())
        now_ms = seconds * 1000 + micros // 1000
        # The key layout lives in RedisBackend; reuse it rather than restate it here.
        entries = cast(list[tuple[bytes, float]], await self.ask(self.client.zrangebyscore(
            self.backend._k("nodes"), now_ms, "+inf", withscores=True)))  # redis-py: a union
        rows = []
        for raw, deadline in entries:
            node_id, clients = _text(raw), 0
            for bucket in range(self.buckets):
                key = self.backend._node_set(bucket, node_id)
                clients += int(await self.ask(self.client.scard(key)))
            rows.append({"node_id": node_id, "clients": clients, "deadline": _iso(deadline),
                         "expires_in": round((deadline - now_ms) / 1000, 3)})
        return sorted(rows, key=lambda row: str(row["node_id"]))

    async def groups(self) -> list[Row]:
        """Every group with members: SCAN MATCH on the group sets, then SCARD in batches."""
        prefix = self.backend._k("g", "")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        keys: dict[str, bytes] = {}
        cursor = 0
        while True:
            cursor, batch = cast(tuple[int, list[bytes]], await self.ask(  # redis-py: a union
                self.client.scan(cursor, match=pattern, count=1000)))
            keys.update((_text(key)[len(prefix):], key) for key in batch)  # raw user strings
            if int(cursor) == 0:
                break
        names = sorted(keys)
        rows = []
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            async with self.client.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.scard(keys[name])
                counts = await self.ask(pipe.execute(raise_on_error=False))
            rows += [{"group": name, "members": count} for name, count in zip(chunk, counts,
                     strict=True) if isinstance(count, int) and count > 0]
        return rows

    async def nodes(self, args: argparse.Namespace) -> int:
        self.emit(await self.live_nodes(), ["node_id", "clients", "deadline", "expires_in"],
                  args.json)
        return 0

    async def clients(self, args: argparse.Namespace) -> int:
        """Stream presence entries as HSCAN returns them (rehashing may repeat one)."""
        width = max([7, *(len(row["node_id"]) for row in await self.live_nodes())])
        limit, shown = args.limit, 0
        write = self.out.write
        write("[" if args.json else f"{'SINCE':<24}  {'CONN_ID':<16}  "
              f"{'NODE_ID':<{width}}  CLIENT_ID\n")
        async for presence in self.backend.scan(min(limit or 500, 500)):
            row = _presence_row(presence)
            if args.json:
                write(("," if shown else "") + "\n" + json.dumps(row))
            else:
                write(f"{row['since']:<24}  {row['conn_id']:<16}  {row['node_id']:<{width}}  "
                      f"{_show(presence.client_id)}\n")
            shown += 1
            if shown == limit:
                break
        write("\n]\n" if args.json else "")
        return 0

    async def list_groups(self, args: argparse.Namespace) -> int:
        self.emit(await self.groups(), ["members", "group"], args.json)
        return 0

    async def locate(self, args: argparse.Namespace) -> int:
        presence = await self.backend.locate(args.client_id)
        if presence is None:
            self.out.write(json.dumps({"client_id": args.client_id, "node_id": None}) + "\n"
                           if args.json else f"client {_show(args.client_id)} is not connected\n")
            return EXIT_NOT_FOUND
        row = _presence_row(presence)
        self.emit([row] if not args.json else row, ["node_id", "conn_id", "since", "client_id"],
                  args.json)
        return 0

    async def stats(self, args: argparse.Namespace) -> int:
        totals = {"connections": await self.backend.count(),
                  "nodes": len(await self.backend.nodes()), "groups": len(await self.groups())}
        table = [{"stat": name, "value": value} for name, value in totals.items()]
        self.emit(totals if args.json else table, ["stat", "value"], args.json)
        return 0

    def emit(self, data: list[Row] | Row, columns: list[str], as_json: bool) -> None:
        """Write `data` as JSON, or as a table whose last column is left unpadded."""
        if as_json:
            self.out.write(json.dumps(data, indent=2) + "\n")
            return
        assert isinstance(data, list)
        cells = [[c.upper() for c in columns]] + [[_show(str(r[c])) for c in columns]
                                                 for r in data]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for row in cells:
            padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
            self.out.write("  ".join([*padded, row[-1]]) + "\n")


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _iso(ms: float) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _show(text: str) -> str:
    """Ids are raw user strings: escape what would break a table line or the terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _presence_row(presence: Presence) -> Row:
    return {"client_id": presence.client_id, "node_id": presence.node_id,
            "conn_id": presence.conn_id, "since": _iso(presence.since * 1000),
            "since_ms": int(presence.since * 1000)}


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options, then one command."""
    parser = _Parser(prog=PROG, description="Inspect a stabilizer cluster's state in Redis.")
    parser.add_argument("--redis-url", required=True, metavar="URL", help="redis://host:port/db")
    parser.add_argument("--namespace", default="stabilizer", metavar="NS")
    parser.add_argument("--presence-buckets", type=int, default=1, metavar="N",
                        help="as configured on the nodes (default 1)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="bound on connecting and on each Redis call (default 2)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    json_too = _Parser(add_help=False)  # --json is also accepted after the command
    json_too.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    for name, command, summary in [
        ("nodes", Inspector.nodes, "live nodes, deadlines (expires_in: seconds) and clients"),
        ("clients", Inspector.clients, "connected clients (HSCAN, streamed)"),
        ("groups", Inspector.list_groups, "groups and their member counts"),
        ("locate", Inspector.locate, "the node holding client ID (exit 1: none)"),
        ("stats", Inspector.stats, "cluster totals"),
    ]:
        sub = commands.add_parser(name, parents=[json_too], help=summary)
        sub.set_defaults(command=command)
        if name == "clients":
            sub.add_argument("--limit", type=int, default=1000, help="at most N (0: all)")
        elif name == "locate":
            sub.add_argument("client_id", metavar="ID")
    return parser


async def run(args: argparse.Namespace, out: TextIO) -> int:
    """Connect, run the command, close."""
    client = Redis.from_url(args.redis_url, socket_connect_timeout=args.timeout,
                            socket_timeout=args.timeout, retry=Retry(NoBackoff(), 0))
    backend = RedisBackend(client, namespace=args.namespace, owns_client=True,
                           presence_buckets=args.presence_buckets, op_timeout=args.timeout)
    command: Callable[[Inspector, argparse.Namespace], Awaitable[int]] = args.command
    try:
        return await command(Inspector(backend, args, out), args)
    finally:
        await backend.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        WebSocketConfig(redis_url=args.redis_url, namespace=args.namespace,
                        presence_buckets=args.presence_buckets, op_timeout=args.timeout)
        if getattr(args, "limit", 0) < 0:
            raise ConfigError("--limit must be 0 (all) or positive")
        parse_url(args.redis_url)  # rejects unknown schemes before anything runs
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(run(args, sys.stdout))
    except BackendUnavailable as exc:
        reason = " ".join(str(exc.__cause__ or exc).split()) or f"no answer in {args.timeout:g}s"
        print(f"{PROG}: cannot reach Redis at {_redacted(args.redis_url)}: {reason}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
