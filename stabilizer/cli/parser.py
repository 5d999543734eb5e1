"""The command line: global options (flags win over the STABILIZER_* variables the replicas
read), then one command; and the checks that run before anything connects."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Final

from stabilizer.backends.redis.inspect import check_url
from stabilizer.cli import publish
from stabilizer.cli.common import PROG, Parser
from stabilizer.cli.inspect import Inspector, inspecting
from stabilizer.cli.watch import watch
from stabilizer.config import WebSocketConfig
from stabilizer.errors import ConfigError
from stabilizer.pure.text import check_client_id

#: option dest -> the WebSocketConfig field it sets (when given)
_SETTINGS: Final = {"redis_url": "redis_url", "cluster": "redis_cluster",
                    "namespace": "namespace", "presence_buckets": "presence_buckets",
                    "timeout": "op_timeout", "history_size": "history_size",
                    "history_ttl": "history_ttl", "session_ttl": "session_ttl"}
_DESCRIPTION: Final = (
    "Inspect and act on a stabilizer cluster through its Redis. Settings not given as "
    "options are read from the STABILIZER_* variables the replicas read.")


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options, then one command."""
    parser = Parser(prog=PROG, description=_DESCRIPTION)
    option = parser.add_argument
    option("--redis-url", metavar="URL", help="redis://, rediss://, unix:// or "
           "redis+sentinel://host:port[,host:port]/service[/db] (else STABILIZER_REDIS_URL)")
    option("--cluster", action="store_true", default=None,
           help="the URL names a Redis Cluster node (as redis_cluster=True on the replicas)")
    option("--namespace", metavar="NS", help="as configured on the replicas")
    option("--presence-buckets", type=int, metavar="N", help="as configured (default 1)")
    option("--timeout", type=float, metavar="SECONDS",
           help="bound on connecting and on each Redis call (default 2)")
    option("--history-size", type=int, metavar="N",
           help="as configured on the replicas: send and broadcast sequence into history")
    option("--history-ttl", type=float, metavar="SECONDS", help="as configured on the replicas")
    option("--session-ttl", type=float, metavar="SECONDS", help="as configured on the replicas")
    option("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    json_too = Parser(add_help=False)  # --json is also accepted after the command
    json_too.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[json_too], help=summary, description=summary)

    command("nodes", "live nodes, deadlines (expires_in: seconds) and clients").set_defaults(
        command=inspecting(Inspector.nodes))
    clients = command("clients", "connected clients (HSCAN, streamed)")
    clients.set_defaults(command=inspecting(Inspector.clients))
    clients.add_argument("--limit", type=int, default=1000, help="at most N (0: all)")
    command("groups", "groups and their member counts").set_defaults(
        command=inspecting(Inspector.list_groups))
    locate = command("locate", "the node holding client ID (exit 1: none)")
    locate.set_defaults(command=inspecting(Inspector.locate))
    locate.add_argument("client_id", metavar="ID")
    command("stats", "cluster totals").set_defaults(command=inspecting(Inspector.stats))

    send = command("send", "send MESSAGE (text) to client ID on any replica (exit 1: no one "
                   "holds it)")
    send.set_defaults(command=publish.send)
    send.add_argument("client_id", metavar="ID")
    send.add_argument("message", metavar="MESSAGE")
    broadcast = command("broadcast", "send MESSAGE (text) to every client (exit 1: no replica "
                        "listening)")
    broadcast.set_defaults(command=publish.broadcast)
    broadcast.add_argument("message", metavar="MESSAGE")
    kick = command("kick", "close client ID, or every connection of --user, on any replica "
                   "(exit 1: none)")
    kick.set_defaults(command=publish.kick)
    kick.add_argument("client_id", metavar="ID", nargs="?")
    kick.add_argument("--user", metavar="USER_ID", help="every connection of this user")
    kick.add_argument("--code", type=int, default=1000,
                      help="close code: 1000 (default; ends a resumable session), 1001, "
                      "1008, 1011-1013 or 3000-4999")
    kick.add_argument("--reason", default="disconnected by the server", metavar="TEXT",
                      help="close reason, sent as a close frame carries it (at most 123 "
                      "UTF-8 bytes; a byte the locale cannot decode as ?)")

    watch_ = command("watch", "a refreshing view of the nodes and rates (Ctrl-C quits)")
    watch_.set_defaults(command=watch)
    watch_.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between refreshes (default 2)")
    watch_.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N refreshes (default 0: until Ctrl-C)")
    return parser


def config_from(args: argparse.Namespace, environ: Mapping[str, str]) -> WebSocketConfig:
    """The replicas' settings: STABILIZER_* variables, overridden by the options given.

    Raises:
        ConfigError: no Redis is named, a setting is invalid, or the URL does not parse.
    """
    given = {field: getattr(args, dest) for dest, field in _SETTINGS.items()
             if getattr(args, dest) is not None}
    config = WebSocketConfig.from_env(environ, **given)
    if config.redis_url is None:
        raise ConfigError("no Redis named: give --redis-url URL or set STABILIZER_REDIS_URL")
    if config.redis_cluster and config.redis_url.startswith("redis+sentinel://"):
        raise ConfigError("--cluster takes a Cluster node's redis:// URL, not a Sentinel's")
    check_url(config.redis_url)  # rejects a bad port or host list before anything runs
    return config


def check_args(config: WebSocketConfig, args: argparse.Namespace) -> None:
    """Reject what the command would reject, before anything connects.

    Raises:
        ValueError: an option or argument out of range, or an unusable id or close code.
    """
    if getattr(args, "limit", 0) < 0:
        raise ConfigError("--limit must be 0 (all) or positive")
    interval = getattr(args, "interval", 1.0)
    if not (math.isfinite(interval) and interval > 0):
        raise ConfigError("--interval must be a positive number of seconds")
    if getattr(args, "count", 0) < 0:
        raise ConfigError("--count must be 0 (until Ctrl-C) or positive")
    if args.command is publish.kick and (args.client_id is None) == (args.user is None):
        raise ConfigError("kick takes a client ID or --user USER_ID (one of them)")
    if getattr(args, "client_id", None) is not None:
        check_client_id(args.client_id, config.max_client_id_length)
    publish.check(args)
