"""The replica's CPU per script call of a reconnect storm's batches: hiredis packing against
redis-py's, in the same run.

N calls shaped like a connect's REGISTER (two keys, eighteen arguments, most of them
per-node strings) go through the Redis backend's ``ScriptBatcher`` with C of them in
flight, against a redis-server started for the run; the script itself only counts its
arguments, so what differs between the two ways is the replica's side. Rounds alternate
between packing by hiredis (the default) and by redis-py (``exchange.C_PACKING`` off: the
path a plain ``redis`` install takes); each round reports the process CPU per call.

``python -m bench.batch [--calls N] [--concurrency C] [--rounds R]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from bench.support import RedisProc
from stabilizer.backends.redis import exchange
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.node.tasks import TaskOwner

COUNT_ARGS = "return #ARGV"
KEYS = ["{ns}:presence:0", "{ns}:nodeset:0:node-a"]
ARGS: list[Any] = [
    "client-0", "node-a|c0123456789abcdef|1732838400000000|", "node-a", 0, "{ns}:pn:0:",
    "{ns}:node:0:", "kick-prefix", "PUBLISH", "0", "{ns}:g:", "", b"", "", "", 0, "{ns}:u:",
    "{ns}:users", "1"]


async def rounds(url: str, calls: int, concurrency: int, count: int) -> dict[str, list[float]]:
    client = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=32))
    core = RedisCore(client, KeyLayout("bench"), op_timeout=10.0, pool_size=32)
    core.tasks = TaskOwner()
    await client.script_load(COUNT_ARGS)
    batcher = ScriptBatcher(core, client.register_script(COUNT_ARGS), "register")
    slots = asyncio.Semaphore(concurrency)

    async def register(i: int) -> None:
        args = list(ARGS)
        args[0] = f"client-{i}"
        async with slots:
            assert int(await batcher.submit(KEYS, args)) == len(ARGS)

    results: dict[str, list[float]] = {"hiredis": [], "redis-py": []}
    try:
        await asyncio.gather(*(register(i) for i in range(500)))  # warm up
        for index in range(count * 2):
            way = "hiredis" if index % 2 == 0 else "redis-py"
            exchange.C_PACKING = way == "hiredis"
            started = time.process_time()
            await asyncio.gather(*(register(i) for i in range(calls)))
            results[way].append((time.process_time() - started) / calls * 1e6)
    finally:
        exchange.C_PACKING = True
        await client.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not exchange.C_PACKING:
        parser.error("hiredis is not installed (pip install 'redis[hiredis]')")
    with RedisProc(Path(tempfile.mkdtemp(prefix="bench-batch-"))) as redis:
        results = asyncio.run(rounds(redis.url, args.calls, args.concurrency, args.rounds))
    base = statistics.median(results["redis-py"])
    print(f"{args.calls:,} REGISTER-shaped calls per round, {args.concurrency} in flight, "
          f"{args.rounds} rounds each, alternating; replica CPU µs per call\n")
    print("| packing | median | range | vs redis-py |\n|---|---:|---:|---:|")
    for way, values in results.items():
        median = statistics.median(values)
        print(f"| {way} | {median:.1f} | {min(values):.1f}–{max(values):.1f} | "
              f"{median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
