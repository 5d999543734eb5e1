"""The read-only commands: nodes, clients, groups, locate, stats."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Awaitable, Callable
from typing import TextIO

from stabilizer.backends.base import Presence
from stabilizer.backends.redis import RedisBackend
from stabilizer.backends.redis.inspect import RedisInspector, open_backend
from stabilizer.cli.common import EXIT_NOT_FOUND, Row, emit, iso, show
from stabilizer.config import WebSocketConfig

Command = Callable[[WebSocketConfig, argparse.Namespace, TextIO], Awaitable[int]]


class Inspector:
    """The commands: read-only queries over one namespace, every Redis call bounded."""

    def __init__(self, backend: RedisBackend, timeout: float, out: TextIO) -> None:
        self.backend, self.out = backend, out
        self.redis = RedisInspector(backend, timeout)

    async def live_nodes(self) -> list[Row]:
        """Live nodes with their client counts and deadlines (a deadline of no time, as
        an infinite score: "?" and an expires_in of None)."""
        return [{"node_id": row.node_id, "clients": row.clients,
                 "deadline": iso(row.deadline_ms),
                 "expires_in": round((row.deadline_ms - row.now_ms) / 1000, 3)
                 if math.isfinite(row.deadline_ms) else None}
                for row in await self.redis.live_nodes()]

    async def groups(self) -> list[Row]:
        """Every group with members."""
        return [{"group": name, "members": count}
                for name, count in await self.redis.group_counts()]

    async def nodes(self, args: argparse.Namespace) -> int:
        emit(self.out, await self.live_nodes(), ["node_id", "clients", "deadline", "expires_in"],
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
                      f"{show(presence.client_id)}\n")
            shown += 1
            if shown == limit:
                break
        write("\n]\n" if args.json else "")
        return 0

    async def list_groups(self, args: argparse.Namespace) -> int:
        emit(self.out, await self.groups(), ["members", "group"], args.json)
        return 0

    async def locate(self, args: argparse.Namespace) -> int:
        presence = await self.backend.presence.locate(args.client_id)
        if presence is None:
            self.out.write(json.dumps({"client_id": args.client_id, "node_id": None}) + "\n"
                           if args.json else f"client {show(args.client_id)} is not connected\n")
            return EXIT_NOT_FOUND
        emit(self.out, _presence_row(presence), ["node_id", "conn_id", "since", "client_id"],
             args.json)
        return 0

    async def stats(self, args: argparse.Namespace) -> int:
        backend = self.backend
        totals = {"connections": await backend.presence.count(),
                  "nodes": len(await backend.liveness.nodes()), "groups": len(await self.groups())}
        table = [{"stat": name, "value": value} for name, value in totals.items()]
        emit(self.out, totals if args.json else table, ["stat", "value"], args.json)
        return 0


def inspecting(method: Callable[[Inspector, argparse.Namespace], Awaitable[int]]) -> Command:
    """`method` as a command: open a backend, run it, close the backend."""
    async def command(config: WebSocketConfig, args: argparse.Namespace, out: TextIO) -> int:
        backend = open_backend(config)
        try:
            return await method(Inspector(backend, config.op_timeout, out), args)
        finally:
            await backend.aclose()
    return command


def _presence_row(presence: Presence) -> Row:
    return {"client_id": presence.client_id, "node_id": presence.node_id,
            "conn_id": presence.conn_id, "since": iso(presence.since * 1000),
            "since_ms": int(presence.since * 1000)}
