"""Concurrent calls of one script sent as one pipelined round trip (a reconnect storm's
registrations, a disconnect storm's removals, many direct sends at once).

The rule is Nagle's: a call goes at once when no round trip of its script is in flight,
and the calls that arrive meanwhile go together when it returns. That alone batches only
when calls bunch up in time. On a busy event loop they may not: under uvloop a replica
taking a reconnect storm reads about one handshake per loop pass, and each registration's
round trip returned just as the next one was made, so nearly every connect paid a round
trip of its own (BENCHMARKS.md). So a batcher that may hold does: when calls arrived while
the last round trip was in flight (more are on their way), the next batch waits until
``batch_window`` after the last one went, or until HELD_AT_MOST calls have gathered. A
caller alone, or calls that never meet, are never held.

A caller that gives up (cancelled, or out of a bound above) while its call waits in the
queue is told it failed, and the call is not sent. One that gives up once its call is on
the wire cannot stop it: a call submitted with an ``undo`` has it run on the answer, if
the call succeeded after its caller left (a registration whose connect was cancelled),
and with None if its round trip failed (it may have run: the reply was lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.exchange import Call as WireCall
from stabilizer.backends.redis.exchange import evalsha_batch, packed_ahead, unpackable
from stabilizer.backends.redis.replies import is_refusal
from stabilizer.errors import BackendRefused, BackendUnavailable

#: the calls a held batch gathers at most: that many go at once, the window notwithstanding
HELD_AT_MOST: Final = 512


class ScriptBatcher:
    """Runs the calls of one script that meet in time as one pipelined round trip.

    A call runs right away when none is in flight; calls that arrive while a round trip is
    in flight are queued and sent together when it returns, or, with `hold`, up to the
    core's batch_window after it was sent (the module's docstring says why). Results (and
    exceptions) go back to each caller; every call is bounded by op_timeout (plus the
    window, when it was held). The batches run in a task of the node's task owner; before
    the backend is opened (a manager that was never started) a call simply runs alone. On
    a Cluster a batch is one pipeline per master, sent concurrently; a call redirected
    (MOVED, ASK) is sent again alone, which is safe: a redirected call did not run.
    """

    def __init__(self, core: RedisCore, script: AsyncScript, op: str, *,
                 hold: bool = True) -> None:
        self._core = core
        self._script = script
        self._op = op
        self._window = core.batch_window if hold else 0.0
        self._full: asyncio.Future[None] | None = None  # a held batch's wait, while it waits
        # the calls waiting for their round trip (their keys and arguments, packed ahead
        # where they can be: exchange.packed_ahead) and, at the same index, their callers'
        # futures: two lists, not a pair per call, which a reconnect storm would keep alive
        self._calls: list[WireCall] = []
        self._futures: list[asyncio.Future[Any]] = []
        # what undoes a call if it succeeds after its caller gave up (few calls have one)
        self._undos: dict[asyncio.Future[Any], Callable[[Any], None]] = {}
        self._task: asyncio.Task[Any] | None = None

    def submit(self, keys: list[str], args: list[Any],
               undo: Callable[[Any], None] | None = None) -> Awaitable[Any]:
        """Queue one call; the awaitable returned gives its result (or raises
        BackendUnavailable). (A future, not a coroutine: a call waiting for its batch keeps
        no frame of its own alive.) `undo` is called with the result of a call that
        succeeded once its caller had given up, or with None if its round trip failed
        then (whether it ran is unknown)."""
        core = self._core
        if core.tasks is None:
            return core.call(self._script(keys=keys, args=args), self._op)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if undo is not None:
            self._undos[future] = undo
        self._calls.append((keys, args) if core.cluster
                           else packed_ahead(self._script.sha, keys, args))
        self._futures.append(future)
        if self._task is None:
            task = self._task = core.spawn(self._drain(), name=f"stabilizer-redis-{self._op}")
            task.add_done_callback(self._drained)
        elif (full := self._full) is not None and len(self._futures) >= HELD_AT_MOST:
            _release(full)
        return future

    def _take(self) -> tuple[list[WireCall], list[asyncio.Future[Any]]]:
        """Empty the queue; return the calls it held and their futures, but for those whose
        callers gave up meanwhile (cancelled, or out of a bound above): they were told the
        call failed, so it must not run."""
        calls, futures = self._calls, self._futures
        self._calls, self._futures = [], []
        if any(future.done() for future in futures):
            for future in futures:
                if future.done():  # (never sent: nothing to undo)
                    self._undos.pop(future, None)
            waiting = [index for index, future in enumerate(futures) if not future.done()]
            calls = [calls[index] for index in waiting]
            futures = [futures[index] for index in waiting]
        return calls, futures

    async def _drain(self) -> None:
        futures: list[asyncio.Future[Any]] = []
        loop = asyncio.get_running_loop()
        try:
            sent_at: float | None = None
            while self._calls:
                if sent_at is not None:  # these arrived while a round trip was in flight
                    await self._gather(sent_at + self._window - loop.time())
                calls, futures = self._take()
                if not calls:
                    continue  # every caller gave up
                sent_at = loop.time()
                await self._run(calls, futures)
            futures = []
        except BaseException:  # cancelled (the node stops): no caller may wait forever
            _fail(futures + self._take()[1], "the node stopped before this call was answered")
            self._undos.clear()  # (the node's end removes what it registered)
            raise
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _gather(self, hold: float) -> None:
        """Let more calls join the next batch for `hold` seconds, unless it is full."""
        if hold <= 0 or len(self._futures) >= HELD_AT_MOST:
            return
        loop = asyncio.get_running_loop()
        full = self._full = loop.create_future()
        timer = loop.call_later(hold, _release, full)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None

    def _drained(self, task: asyncio.Task[Any]) -> None:
        # A task cancelled before its first step never ran its finally: its queue is failed
        # here (a newer task, if one started, owns the queue then).
        if self._task is task:
            self._task = None
            _fail(self._take()[1], "the node stopped before this call was sent")
            self._undos.clear()

    async def _run(self, calls: list[WireCall], futures: list[asyncio.Future[Any]]) -> None:
        undos = self._undos
        try:
            results = await self._pipelined(calls)
        except BackendUnavailable as exc:
            for future in futures:
                undo = undos.pop(future, None) if undos else None
                if not future.done():
                    future.set_exception(exc)
                elif undo is not None:  # its caller gone; the call may have run: unknown
                    undo(None)
            return
        for future, result in zip(futures, results, strict=True):
            undo = undos.pop(future, None) if undos else None
            if future.done():  # its caller gave up while the call was on the wire
                if undo is not None and not isinstance(result, BaseException):
                    undo(result)
                elif undo is not None and not is_refusal(result):  # it may have run
                    undo(None)
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


def _release(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)
