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
from typing import Any, Final, NoReturn, TextIO
from urllib.parse import urlsplit

from stabilizer.backends.base import Presence
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.inspect import RedisInspector, check_url, open_backend
from stabilizer.config import WebSocketConfig
from stabilizer.errors import BackendUnavailable, ConfigError

PROG: Final = "python -m stabilizer"
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
Row = dict[str, Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Report bad arguments on one line (argparse would print the usage first)."""
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {PROG} --help)\n")


class Inspector:
    """The commands: read-only queries over one namespace, every Redis call bounded."""

    def __init__(self, backend: RedisBackend, args: argparse.Namespace, out: TextIO) -> None:
        self.backend, self.out = backend, out
        self.redis = RedisInspector(backend, args.timeout)

    async def live_nodes(self) -> list[Row]:
        """Live nodes with their client counts and deadlines."""
        return [{"node_id": row.node_id, "clients": row.clients,
                 "deadline": _iso(row.deadline_ms),
                 "expires_in": round((row.deadline_ms - row.now_ms) / 1000, 3)}
                for row in await self.redis.live_nodes()]

    async def groups(self) -> list[Row]:
        """Every group with members."""
        return [{"group": name, "members": count}
                for name, count in await self.redis.group_counts()]

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
        async for presence in self.backend.presence.scan(min(limit or 500, 500)):
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
        presence = await self.backend.presence.locate(args.client_id)
        if presence is None:
            self.out.write(json.dumps({"client_id": args.client_id, "node_id": None}) + "\n"
                           if args.json else f"client {_show(args.client_id)} is not connected\n")
            return EXIT_NOT_FOUND
        row = _presence_row(presence)
        self.emit([row] if not args.json else row, ["node_id", "conn_id", "since", "client_id"],
                  args.json)
        return 0

    async def stats(self, args: argparse.Namespace) -> int:
        backend = self.backend
        totals = {"connections": await backend.presence.count(),
                  "nodes": len(await backend.liveness.nodes()), "groups": len(await self.groups())}
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
    backend = open_backend(args.redis_url, args.namespace, args.presence_buckets, args.timeout)
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
        check_url(args.redis_url)  # rejects unknown schemes before anything runs
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
