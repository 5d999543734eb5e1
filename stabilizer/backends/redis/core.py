"""What every Redis role shares: the client, the key layout, the scripts, and one bounded,
measured way to run a command.

Every call names its operation for the latency histogram, runs under ``op_timeout``, waits
for one of ``pool_size`` slots (so a burst waits instead of making the client's pool raise
"Too many connections"), and turns redis and socket errors into BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from stabilizer.backends.base import TaskSpawner
from stabilizer.backends.redis import group_scripts as groups_lua
from stabilizer.backends.redis import scripts as lua
from stabilizer.backends.redis import spread_scripts as spread_lua
from stabilizer.backends.redis import stream_scripts as streams_lua
from stabilizer.backends.redis import user_scripts as users_lua
from stabilizer.backends.redis.exchange import Call as WireCall
from stabilizer.backends.redis.exchange import (
    evalsha_batch,
    evalsha_on,
    packed_ahead,
    pooled,
    unpackable,
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
        self.keepalive = register(lua.KEEPALIVE)
        self.reap = register(lua.REAP_BATCH)
        self.live_nodes = register(lua.LIVE_NODES)
        self.resync = register(lua.RESYNC)
        self.reap_clients = register(lua.REAP_CLIENTS)
        self.prune = register(lua.PRUNE)
        self.suspend = register(streams_lua.SUSPEND)
        self.suspend_session = register(streams_lua.SUSPEND_SESSION)
        self.load_session = register(streams_lua.LOAD_SESSION)
        self.session_holder = register(streams_lua.SESSION_HOLDER)
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
        pool_size: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.op_timeout = op_timeout
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
        self.tasks: TaskSpawner | None = None
        self._in_flight = asyncio.Semaphore(pool_size)

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        """Start a helper task owned by the node (open() must have run)."""
        if self.tasks is None:
            coro.close()
            raise BackendUnavailable("the backend is not open")
        return self.tasks.spawn(coro, name=name)

    async def call(self, awaitable: Awaitable[Any], op: str) -> Any:
        """Await one Redis command or script as operation `op`; translate failures.

        Raises:
            BackendRefused: Redis answered with an error a retry will not get past.
            BackendUnavailable: Redis failed, or did not answer within op_timeout.
        """
        started = time.perf_counter()
        awaited = False
        try:
            async with asyncio.timeout(self.op_timeout), self._in_flight:
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


class ScriptBatcher:
    """Runs the calls of one script that meet in time as one pipelined round trip.

    A call runs right away when none is in flight; calls that arrive while a round trip is
    in flight are queued and sent together as soon as it returns. Results (and exceptions)
    go back to each caller; every call is bounded by op_timeout. The batches run in a task
    of the node's task owner; before the backend is opened (a manager that was never
    started) a call simply runs alone. On a Cluster a batch is one pipeline per master,
    sent concurrently; a call redirected (MOVED, ASK) is sent again alone, which is safe:
    a redirected call did not run.
    """

    def __init__(self, core: RedisCore, script: AsyncScript, op: str) -> None:
        self._core = core
        self._script = script
        self._op = op
        # the calls waiting for their round trip (their keys and arguments, packed ahead
        # where they can be: exchange.packed_ahead) and, at the same index, their callers'
        # futures: two lists, not a pair per call, which a reconnect storm would keep alive
        self._calls: list[WireCall] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._task: asyncio.Task[Any] | None = None

    def submit(self, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Queue one call; the awaitable returned gives its result (or raises
        BackendUnavailable). (A future, not a coroutine: a call waiting for its batch keeps
        no frame of its own alive.)"""
        core = self._core
        if core.tasks is None:
            return core.call(self._script(keys=keys, args=args), self._op)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((keys, args) if core.cluster
                           else packed_ahead(self._script.sha, keys, args))
        self._futures.append(future)
        if self._task is None:
            task = self._task = core.spawn(self._drain(), name=f"stabilizer-redis-{self._op}")
            task.add_done_callback(self._drained)
        return future

    def _take(self) -> tuple[list[WireCall], list[asyncio.Future[Any]]]:
        """Empty the queue; return the calls it held and their futures."""
        taken = self._calls, self._futures
        self._calls, self._futures = [], []
        return taken

    async def _drain(self) -> None:
        futures: list[asyncio.Future[Any]] = []
        try:
            while self._calls:
                calls, futures = self._take()
                await self._run(calls, futures)
            futures = []
        except BaseException:  # cancelled (the node stops): no caller may wait forever
            _fail(futures + self._take()[1], "the node stopped before this call was answered")
            raise
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _drained(self, task: asyncio.Task[Any]) -> None:
        # A task cancelled before its first step never ran its finally: its queue is failed
        # here (a newer task, if one started, owns the queue then).
        if self._task is task:
            self._task = None
            _fail(self._take()[1], "the node stopped before this call was sent")

    async def _run(self, calls: list[WireCall], futures: list[asyncio.Future[Any]]) -> None:
        try:
            results = await self._pipelined(calls)
        except BackendUnavailable as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BackendUnavailable):
                future.set_exception(result)
            elif isinstance(result, BaseException):
                error = (BackendRefused(f"redis refused: {result}") if is_refusal(result)
                         else BackendUnavailable(f"redis error: {result!r}"))
                error.__cause__ = result
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _pipelined(self, calls: list[WireCall]) -> list[Any]:
        """One round trip of raw EVALSHA calls (the scripts were loaded at open): packed in
        C and written to one pooled connection (exchange.py), or on a Cluster one pipeline
        per master, concurrently (redis-py's retry is off: connect.py). A server that
        answers NOSCRIPT (it restarted empty) gets every script loaded once, and those calls
        again in one more round trip: they did not run."""
        results = await self._send(calls)
        again = [index for index, result in enumerate(results)
                 if isinstance(result, NoScriptError)]
        if again:
            try:
                await self._core.load_scripts()
                answers = await self._send([calls[index] for index in again])
            except BackendUnavailable as exc:
                answers = [exc] * len(again)
            for index, answer in zip(again, answers, strict=True):
                results[index] = answer
        return results

    async def _send(self, calls: list[WireCall]) -> list[Any]:
        core = self._core
        client = core.client
        if isinstance(client, RedisCluster):
            scripts = [call for call in calls if isinstance(call, tuple)]  # (all of them)
            results: list[Any] = [unpackable(keys, args) for keys, args in scripts]
            pipe = client.pipeline()
            for (keys, args), refused in zip(scripts, results, strict=True):
                if refused is None:
                    pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys,
                                         *args)
            if len(pipe):
                answers = iter(await core.call(pipe.execute(raise_on_error=False), self._op))
                results = [next(answers) if refused is None else refused
                           for refused in results]
            return results
        sent: list[Any] = await core.call(evalsha_batch(client, self._script.sha, calls),
                                          self._op)
        return sent


def _fail(futures: list[asyncio.Future[Any]], reason: str) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(BackendUnavailable(reason))


def now_ms() -> int:
    """Wall-clock milliseconds (the away list's scores, where the node sets them)."""
    return int(time.time() * 1000)


def text(value: bytes | str) -> str:
    """A Redis reply as text (ids may hold any character: undecodable bytes survive)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
