"""Reproduce a stabilizer problem: a burst of connects exhausts redis-py's connection pool.

Usage::

    python -m bench.burst                         # 1,000 clients, 4 generators x 64 in flight
    python -m bench.burst --concurrency 8         # a gentler burst
    python -m bench.burst --no-group              # connect only (no join_group)

One stabilizer replica on a fresh redis-server (``WebSocketConfig(redis_url=...)``, nothing
else), N clients connect at once from 4 load generators; each client's endpoint calls
``manager.join_group(client_id, "g")`` after admission, once (no retry). The report shows
how many sessions survived, and whether Redis presence and the group set agree with the
sockets the replica holds, right after the burst and later (the node's maintenance runs
every node_ttl / 3 seconds and re-registers presence it knows it failed to write).

What it shows with redis-py 8 (pool ``max_connections`` defaults to 100 and raises
``MaxConnectionsError`` instead of waiting): every admission or join is one Redis call on
its own pooled connection, the accept happens before them, so a burst has more calls in
flight than the pool allows; they fail with ``BackendUnavailable("redis unavailable: Too many
connections")``: registrations degrade (presence written later), ``join_group`` raises into
the application (its session ends), and failed unregistrations leave stale presence.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench._common import raise_nofile_limit
from bench.core import RESULTS, log
from bench.harness import Fleet, Server, free_port, install_cleanup, stop_all
from bench.support import RedisProc, wait_idle


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="handshakes in flight per load generator (4 generators)")
    parser.add_argument("--no-group", action="store_true", help="do not call join_group")
    args = parser.parse_args()
    raise_nofile_limit()
    install_cleanup()
    wait_idle(log)
    log_dir = RESULTS / f"logs-burst-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = "" if args.no_group else "?group=g"
    paths = [f"/ws/c{i}{suffix}" for i in range(args.clients)]
    try:
        with RedisProc(log_dir) as redis, \
                Server("stabilizer", free_port(), log_dir, module="bench.replicas",
                       name="burst", extra_args=["--name", "A", "--redis-url", redis.url,
                                                 "--join-attempts", "1"]) as server, \
                Fleet(4, log_dir) as fleet:
            server.wait_ready()
            for gen, share in zip(fleet.gens, [paths[i::4] for i in range(4)],
                                  strict=True):
                gen.send({"cmd": "connect", "port": server.port, "paths": share,
                          "mode": "ws", "concurrency": args.concurrency, "timeout": 30})
            handshakes = sum(gen.reply(120.0)["connected"] for gen in fleet.gens)
            print(f"{args.clients} clients, 4 generators x {args.concurrency} handshakes in "
                  f"flight{'' if args.no_group else ', join_group after admission'}: "
                  f"{handshakes} handshakes completed")
            previous = 0.0
            for at in (1.0, 5.0, 15.0):
                time.sleep(at - previous)
                previous = at
                count = server.request("GET", "/bench/count")
                print(f"  t={at:>4.0f}s  sockets held {count['count']:>5}  "
                      f"presence {int(redis.command('HLEN', '{stabilizer}:p')):>5}  "
                      f"group members {int(redis.command('SCARD', '{stabilizer}:g:g')):>5}"
                      f"  redis clients "
                      f"{redis.command('INFO', 'clients')['connected_clients']}")
            text = Path(server.log_path).read_text(errors="replace")
            print(f"  server log: {text.count('Exception in ASGI application')} "
                  f"exceptions in the endpoint, {text.count('Too many connections')} "
                  f"'Too many connections' lines; see {server.log_path}")
    finally:
        stop_all()


if __name__ == "__main__":
    main()
