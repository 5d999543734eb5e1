"""What every Redis role shares: the client, the key layout, the scripts, and one bounded,
measured way to run a command.

Every call names its operation for the latency histogram, runs under ``op_timeout``, waits
for one of ``pool_size`` slots (so a burst waits instead of making the client's pool raise
"Too many connections"), and turns redis and socket errors into BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from stabilizer.backends.base import TaskSpawner
from stabilizer.backends.redis import group_scripts as groups_lua
from stabilizer.backends.redis import liveness_scripts as liveness_lua
from stabilizer.backends.redis import scripts as lua
from stabilizer.backends.redis import spread_scripts as spread_lua
from stabilizer.backends.redis import stream_scripts as streams_lua
from stabilizer.backends.redis import user_scripts as users_lua
from stabilizer.backends.redis.exchange import (
    evalsha_on,
    pooled,
)
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.backends.redis.replies import is_refusal
from stabilizer.errors import BackendNotReached, BackendRefused, BackendUnavailable
from stabilizer.pure.wire import event_prefix
from stabilizer.stats import BackendStats


class Scripts:
    """The Lua scripts, registered on the client (EVALSHA; loaded at open, and again by
    redis-py when a server answers NOSCRIPT, e.g. after a restart)."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        register = client.register_script
        self.register = register(lua.REGISTER)
        self.unregister = register(lua.UNREGISTER)
        self.route = register(lua.ROUTE)
        self.spend_token = register(lua.SPEND_TOKEN)
        self.share_keys = register(lua.SHARE_KEYS)
        self.away_at = register(lua.AWAY_AT)
        self.count_groups = register(lua.COUNT_GROUPS)
        self.keepalive = register(liveness_lua.KEEPALIVE)
        self.reap_done = register(liveness_lua.REAP_DONE)
        self.reap = register(liveness_lua.REAP_BATCH)
        self.live_nodes = register(liveness_lua.LIVE_NODES)
        self.resync = register(liveness_lua.RESYNC)
        self.reap_clients = register(liveness_lua.REAP_CLIENTS)
        self.prune = register(liveness_lua.PRUNE)
        self.suspend = register(streams_lua.SUSPEND)
        self.suspend_session = register(streams_lua.SUSPEND_SESSION)
        self.load_session = register(streams_lua.LOAD_SESSION)
        self.session_holder = register(streams_lua.SESSION_HOLDER)
        self.save_user_data = register(streams_lua.SAVE_USER_DATA)
        self.stream_positions = register(streams_lua.STREAM_POSITIONS)
        self.open_session = register(streams_lua.OPEN_SESSION)
        self.end_session = register(streams_lua.END_SESSION)
        self.sweep = register(streams_lua.SWEEP)
        self.membership = register(streams_lua.MEMBERSHIP)
        self.presence_state = register(streams_lua.PRESENCE_STATE)
        self.sequence = register(streams_lua.SEQUENCE)
        self.history = register(streams_lua.HISTORY)
        self.seats = register(users_lua.SEATS)
        self.user_route = register(users_lua.USER_ROUTE)
        self.seat_info = register(users_lua.SEAT_INFO)
        self.reconcile_groups = register(groups_lua.RECONCILE_GROUPS)
        self.route_change = register(groups_lua.ROUTE_CHANGE)
        self.presence_entries = register(groups_lua.PRESENCE_ENTRIES)
        self.group_change = register(spread_lua.GROUP_CHANGE)
        self.client_change = register(spread_lua.CLIENT_CHANGE)
        self.client_end = register(spread_lua.CLIENT_END)
        self.client_open = register(spread_lua.CLIENT_OPEN)
        self.client_list = register(spread_lua.CLIENT_LIST)
        self.positions = register(spread_lua.POSITIONS)
        self.sweep_due = register(spread_lua.SWEEP_DUE)
        self.away_done = register(spread_lua.AWAY_DONE)

    def all(self) -> list[AsyncScript]:
        """Every script."""
        return [value for value in vars(self).values() if isinstance(value, AsyncScript)]


class RedisCore:
    """The client, key layout, scripts and node identity one backend's roles share."""

    def __init__(
        self, client: Redis | RedisCluster, keys: KeyLayout, *, op_timeout: float,
        pool_size: int, batch_window: float = 0.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.op_timeout = op_timeout
        # how long a batch of calls that met a round trip in flight waits for more
        # (batcher.py); 0: it goes as soon as that round trip returns
        self.batch_window = batch_window
        self.cluster = isinstance(client, RedisCluster)
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self.scripts = Scripts(client)
        self.stats = BackendStats()
        self.node_id = ""
        self.events = False
        self.sessions = False  # a membership change names the session's holder
        # how long a membership the store wrote for a client it does not know waits for the
        # client's presence before the sweep ends it (twice node_ttl: keepalive updates it)
        self.orphan_grace_ms = 20_000
        self.available = False
        self.closed = False  # for good: a call would make the client connect again
        self.tasks: TaskSpawner | None = None
        self._in_flight = asyncio.Semaphore(pool_size)

    def check_open(self) -> None:
        """Raise BackendNotReached once the backend is closed."""
        if self.closed:
            raise BackendNotReached("redis backend is closed (its node or emitter stopped); "
                                    "nothing was sent")

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        """Start a helper task owned by the node (open() must have run)."""
        if self.tasks is None or self.closed:
            coro.close()
            self.check_open()
            raise BackendUnavailable("the backend is not open")
        return self.tasks.spawn(coro, name=name)

    async def call(self, awaitable: Awaitable[Any], op: str) -> Any:
        """Await one Redis command or script as operation `op`; translate failures.

        Raises:
            BackendNotReached: the backend is closed: nothing was sent.
            BackendRefused: Redis answered with an error a retry will not get past.
            BackendUnavailable: Redis failed, or did not answer within op_timeout.
        """
        started = time.perf_counter()
        awaited = False
        try:
            async with asyncio.timeout(self.op_timeout), self._in_flight:
                self.check_open()  # (also after waiting for a slot: it may have closed then)
                awaited = True
                result = await awaitable
        # RedisClusterException: a Cluster client that could reach none of its nodes
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            refused = is_refusal(exc)
            self.available = refused  # an error reply: Redis answered
            self.stats.observe(op, time.perf_counter() - started, False)
            if refused:
                raise BackendRefused(f"redis refused {op}: {exc}") from exc
            detail = str(exc) or (f"no answer within {self.op_timeout:g}s"
                                  if isinstance(exc, TimeoutError) else type(exc).__name__)
            raise BackendUnavailable(f"redis unavailable: {detail}") from exc
        finally:
            if not awaited and asyncio.iscoroutine(awaitable):
                awaitable.close()  # timed out or cancelled while waiting for a slot
        self.stats.observe(op, time.perf_counter() - started, True)
        self.available = True
        return result

    async def run_once(self, script: AsyncScript, keys: list[str], args: list[Any],
                       op: str) -> Any:
        """Run a script that must not run twice, nor be thought undone when it may have run,
        as operation `op`.

        redis-py's retry is bypassed: after a lost reply it would run the script again.

        Raises:
            BackendNotReached: no connection could be had: the script certainly did not run.
            BackendUnavailable: it was sent but not answered in time: it may have run (on a
                Cluster every failure counts as this: its client connects while it sends).
        """
        client = self.client
        if isinstance(client, RedisCluster):
            return await self.call(script(keys=keys, args=args), op)
        sent = False

        async def run() -> Any:
            nonlocal sent
            async with pooled(client) as conn:  # connected and checked, nothing sent yet
                sent = True
                [reply] = await evalsha_on(conn, script.sha, [(keys, args)])
                if isinstance(reply, NoScriptError):
                    # (Redis restarted empty) it did not run: send it whole
                    await conn.send_command("EVAL", script.script, len(keys), *keys, *args)
                    return await conn.read_response()
                if isinstance(reply, Exception):
                    raise reply
                return reply

        try:
            return await self.call(run(), op)
        except BackendUnavailable as exc:
            if sent:
                raise
            raise BackendNotReached(str(exc)) from exc.__cause__

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (on every master of a Cluster), so that the first call
        of each, and a pipeline of them, needs no extra round trip."""
        if self.cluster:
            await asyncio.gather(*(self.call(self.client.script_load(script.script),
                                             "script_load") for script in self.scripts.all()))
            return
        pipe = self.client.pipeline(transaction=False)
        for script in self.scripts.all():
            pipe.script_load(script.script)
        await self.call(pipe.execute(), "script_load")

    async def publish(self, channel: str, payload: bytes, op: str = "publish") -> int:
        """PUBLISH (SPUBLISH on a Cluster); return how many subscribers received it."""
        if self.cluster:
            return int(await self.call(self.client.spublish(channel, payload), op))
        return int(await self.call(self.client.publish(channel, payload), op))

    async def scan_set(self, key: str, op: str) -> list[str]:
        """Every member of a set, SSCAN in batches, sorted."""
        found: list[str] = []
        cursor = 0
        while True:
            cursor, batch = await self.call(
                self.client.sscan(key, cursor=cursor, count=500), op)
            found.extend(text(member) for member in batch)
            if int(cursor) == 0:
                return sorted(found)

    async def group_sizes(self, groups: Sequence[str], op: str) -> dict[str, int]:
        """SCARD of each group's member set, in one pipeline (on a Cluster, redis-py sends
        each master its share at once)."""
        if not groups:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for group in groups:
            pipe.scard(self.keys.group(group))
        counts = await self.call(pipe.execute(), op)
        return {group: int(count) for group, count in zip(groups, counts, strict=True)}

    def seat_args(self) -> list[str]:
        """What the presence scripts need to keep the user hashes: the user-hash prefix, the
        users set, and '1' when those share the presence slot."""
        keys = self.keys
        return [keys.user_prefix, keys.users, "1" if keys.seats_here else "0"]

    async def follow_seats(self, ops: list[str], op: str) -> None:
        """Apply seat changes a presence script left for the namespace's slot (several
        presence buckets): flat (op, user, client, arg) quadruples, see SEATS."""
        if ops:
            await self.call(self.scripts.seats(
                keys=[self.keys.users], args=[self.keys.user_prefix, *ops]), op)

    def event_args(self) -> list[str | bytes]:
        """The events channel and envelope prefix scripts publish membership events with
        ('' and b'' when cluster events are off)."""
        if not self.events:
            return ["", b""]
        return [self.keys.events_channel, event_prefix(self.node_id)]


def now_ms() -> int:
    """Wall-clock milliseconds (the away list's scores, where the node sets them)."""
    return int(time.time() * 1000)


def text(value: bytes | str) -> str:
    """A Redis reply as text (ids may hold any character: undecodable bytes survive)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
