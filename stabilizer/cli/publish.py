"""The commands that act on clients, through an Emitter (exactly as a replica would):
send, broadcast, kick."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TextIO

from stabilizer.cli.common import EXIT_NOT_FOUND, EXIT_OK, show
from stabilizer.config import WebSocketConfig
from stabilizer.emitter import Emitter
from stabilizer.emitter.base import check_user
from stabilizer.pure.text import check_close_code, encode_message


def check(args: argparse.Namespace) -> None:
    """Reject a bad user id, close code or message before anything connects.

    Raises:
        ValueError: an unusable user id, close code or message.
    """
    if getattr(args, "user", None) is not None:
        check_user(args.user)
    if hasattr(args, "code"):
        check_close_code(args.code)
    if isinstance(getattr(args, "message", None), str):
        try:
            encode_message(args.message)
        except TypeError as exc:  # text no frame can carry (bytes the locale cannot decode)
            raise ValueError(f"MESSAGE: {exc}") from exc


async def send(config: WebSocketConfig, args: argparse.Namespace, out: TextIO) -> int:
    """Send MESSAGE (text) to one client on whichever replica holds it."""
    async with Emitter(config=config) as emitter:
        delivered = await emitter.send_to_client(args.client_id, args.message)
    _report(out, args, {"client_id": args.client_id, "delivered": delivered},
            f"sent to {show(args.client_id)}" if delivered
            else f"client {show(args.client_id)} is not connected")
    return EXIT_OK if delivered else EXIT_NOT_FOUND


async def broadcast(config: WebSocketConfig, args: argparse.Namespace, out: TextIO) -> int:
    """Send MESSAGE (text) to every client on every replica."""
    async with Emitter(config=config) as emitter:
        result = await emitter.broadcast(args.message)
    row = {"nodes": result.remote_nodes, "offset": result.offset, "epoch": result.epoch}
    at = f" at offset {result.offset}" if result.offset else ""
    _report(out, args, row, f"broadcast{at} reached {result.remote_nodes} node(s)")
    return EXIT_OK if result.remote_nodes else EXIT_NOT_FOUND


async def kick(config: WebSocketConfig, args: argparse.Namespace, out: TextIO) -> int:
    """Close one client's connection, or every connection of a user, with --code."""
    async with Emitter(config=config) as emitter:
        if args.user is not None:
            closed = await emitter.disconnect_user(args.user, code=args.code,
                                                   reason=args.reason)
            _report(out, args, {"user_id": args.user, "connections": closed, "code": args.code},
                    f"closing {closed} connection(s) of user {show(args.user)}")
            return EXIT_OK if closed else EXIT_NOT_FOUND
        found = await emitter.disconnect_client(args.client_id, code=args.code,
                                                reason=args.reason)
    _report(out, args, {"client_id": args.client_id, "closing": found, "code": args.code},
            f"closing {show(args.client_id)} with {args.code}" if found
            else f"client {show(args.client_id)} is not connected")
    return EXIT_OK if found else EXIT_NOT_FOUND


def _report(out: TextIO, args: argparse.Namespace, row: Mapping[str, object], line: str) -> None:
    out.write(json.dumps(row) + "\n" if args.json else line + "\n")
