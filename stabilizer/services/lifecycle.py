"""Start and graceful shutdown of a node.

Start: open the backend (degrading to local service when it cannot be reached), start the
loops (heartbeat, maintenance and, when other nodes or history exist, the listener), and
return once subscribed. Shutdown, in order: refuse new sockets; let each session catch up
with what its client sent (bounded); drain every outbox until the deadline and close each
socket with 1001 or 1012 (with retry advice), aborting what cannot close; until the same
deadline, let the acknowledgements that sends await come back (the listener hears them);
stop every task of the node, failing the sends still waiting; drop the node's presence;
close the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable, ShutdownError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext, Phase
from stabilizer.results import ShutdownReport
from stabilizer.services.closing import Closing, shutdown_reason
from stabilizer.services.settlement import Unregistered
from stabilizer.services.tokens import TokenService

logger = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]
_LOOP_PREFIX = "stabilizer-loop-"
_CLOSER_PREFIX = "stabilizer-close-"


def sibling_workers() -> str | None:
    """How many server workers this process runs beside, when it can tell: a worker that
    uvicorn or gunicorn started ("several" when only a parent process shows it), else None."""
    declared = os.environ.get("WEB_CONCURRENCY", "")
    if declared.isdigit() and int(declared) > 1:
        return declared
    if multiprocessing.parent_process() is not None:  # uvicorn --workers spawns its workers
        return "several"
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return "several"
    return None


class AwaitedAcks(Protocol):
    """The acknowledgements the node's sends await (services/acks.py)."""

    async def drain(self, deadline: float) -> None:
        """Wait until none is awaited, or the loop's clock reaches `deadline`."""

    def stop_listening(self) -> None:
        """Fail every send still waiting: the node hears no more acknowledgements."""


class Lifecycle:
    """new -> running -> draining -> stopped, for one node."""

    def __init__(self, ctx: NodeContext, closing: Closing, tokens: TokenService,
                 loops: dict[str, Loop], acks: AwaitedAcks) -> None:
        self._ctx = ctx
        self._closing = closing
        self._tokens = tokens
        self._loops = loops  # the node's loops by name, started once
        self._acks = acks
        self._starting: asyncio.Future[None] | None = None
        self._stopping: asyncio.Task[ShutdownReport] | None = None  # until stopped
        self._backend_log = RateLimitedLog(logger)

    async def start(self) -> None:
        """Start the node's loops; idempotent.

        Raises:
            ShutdownError: the node is shutting down, or was shut down (the manager starts
                a new node in place of a stopped one).
        """
        ctx = self._ctx
        if ctx.phase is Phase.RUNNING:
            if self._starting is not None:
                await asyncio.shield(self._starting)
            return
        if ctx.phase is Phase.DRAINING:
            raise ShutdownError("this manager is still shutting down; start it again once "
                                "graceful_shutdown() has returned")
        if ctx.phase is not Phase.NEW:
            raise ShutdownError("this node was shut down; its manager starts a new one")
        ctx.phase = Phase.RUNNING
        ctx.loop = asyncio.get_running_loop()
        self._starting = ctx.loop.create_future()
        try:
            try:
                await self._open_backend()
            except BaseException:  # not a backend that is down (the node runs without it):
                if ctx.phase is Phase.RUNNING:  # one that cannot work here; nothing ran yet,
                    ctx.phase = Phase.NEW  # so a later start() tries again
                raise
            if ctx.phase is not Phase.RUNNING:  # shut down while it opened: nothing to run
                return
            for name, loop in self._loops.items():
                ctx.tasks.spawn(loop(), name=f"{_LOOP_PREFIX}{name}:{ctx.node_id}")
            ctx.tasks.spawn(self._until_the_loop_ends(),
                            name=f"stabilizer-teardown:{ctx.node_id}")
            if ctx.follows_others:  # ready means subscribed: other nodes' messages arrive
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ctx.config.op_timeout):
                        await ctx.backend.routing.subscribed.wait()
        finally:
            self._starting.set_result(None)
            self._starting = None
            ctx.started = ctx.phase is not Phase.NEW
        logger.info("stabilizer node %s started (backend %s)", ctx.node_id, ctx.backend.name)

    async def _until_the_loop_ends(self) -> None:
        """Close the backend when the event loop ends under a running node (asyncio.run,
        uvicorn or a TestClient cancels every task then): its connections belong to that
        loop, and the node starts again, with a new backend, in the next loop that uses
        the manager. A shutdown stops this task first and closes the backend itself."""
        try:
            await asyncio.Event().wait()  # only a cancellation ends it
        finally:
            ctx = self._ctx
            if ctx.phase is Phase.RUNNING:
                try:
                    async with asyncio.timeout(ctx.config.op_timeout):
                        await ctx.backend.aclose()
                except Exception:  # the loop is ending: nothing is left to tell
                    logger.debug("backend of node %s not closed at the end of its event "
                                 "loop", ctx.node_id, exc_info=True)

    async def _open_backend(self) -> None:
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.open(ctx.node_id, ctx.tasks,
                                           events=ctx.config.cluster_events,
                                           sessions=ctx.config.history_enabled), round_trips=2)
        except BackendUnavailable as exc:
            ctx.want_resync()
            self._backend_log.warning("backend %s unreachable at start; node runs locally and "
                                      "retries", ctx.backend.name, exc=exc)
        else:
            if ctx.phase is Phase.RUNNING:
                await self._forget_predecessor()
        # a shutdown that began meanwhile waits for this start to end before it closes the
        # backend: ask the backend nothing more, or it would be asked while it closes
        if ctx.phase is not Phase.RUNNING:
            return
        await self._tokens.sync_shared_keys()
        if not ctx.config.token_keys and not ctx.backend.is_shared:
            logger.info("no token_secret configured: reconnect tokens are valid only until "
                        "this process exits")
        if not ctx.backend.is_shared and (workers := sibling_workers()):
            logger.warning(
                "the embedded backend serves one process, and this is one of %s server "
                "workers: each worker has its own clients, broadcasts reach only its own and "
                "send_to_client misses the others'. Set redis_url (STABILIZER_REDIS_URL) to "
                "share them, or run one worker", workers)

    async def _forget_predecessor(self) -> None:
        """End what an earlier process under this node id left (a crash, then a restart
        before its liveness entry expired: no other node reaps it), before admitting."""
        ctx = self._ctx
        config = ctx.config
        session_ttl = config.session_ttl if config.history_enabled else 0.0
        try:
            await ctx.ask(ctx.backend.liveness.forget_predecessor(session_ttl), round_trips=4)
        except BackendUnavailable as exc:  # the resync's prune forgets them instead
            ctx.want_resync()
            self._backend_log.warning("what an earlier process of node %s left was not "
                                      "forgotten (backend unavailable); will retry",
                                      ctx.node_id, exc=exc)

    async def shutdown(self, timeout: float, restart: bool | None) -> ShutdownReport:
        """Drain and close every socket, stop everything; idempotent (a call while another
        runs waits for it and returns its report; one after it an empty report). The stop
        runs in a task of its own, to its end even when every caller is cancelled.

        Raises:
            ShutdownError: a task or the backend failed to stop (after everything else).
        """
        ctx = self._ctx
        stopping = self._stopping
        if stopping is None:
            if ctx.phase is Phase.STOPPED:
                return ShutdownReport(0, 0, 0.0, close_code=int(ctx.shutdown_code))
            if restart is not None:
                ctx.shutdown_code = (CloseCode.SERVICE_RESTART if restart
                                     else CloseCode.GOING_AWAY)
            ctx.phase = Phase.DRAINING  # refused from now on, not from the task's first step
            # what each socket has queued at the call (what its writer sends before the stop
            # task's first step was queued then too: drained, not lost)
            queued = [(conn, len(conn.outbox) + (1 if conn.writing else 0))
                      for conn in ctx.pool.connections()]
            loop = asyncio.get_running_loop()
            # not one of the node's tasks: the stop cancels those, and must outlive them
            stopping = self._stopping = loop.create_task(
                self._shut_down(queued, loop.time() + timeout),
                name=f"stabilizer-shutdown:{ctx.node_id}")
            stopping.add_done_callback(self._stopped)
        return await asyncio.shield(stopping)  # the lifespan's signal drain and its exit

    def _stopped(self, stopping: asyncio.Task[ShutdownReport]) -> None:
        """The stop ended: a later call finds the node stopped (or, after a stop that failed
        before it got there, stops it again)."""
        self._stopping = None
        if not stopping.cancelled():
            stopping.exception()  # retrieved: those still awaiting it raise it

    def ended_with_its_loop(self, restart: bool | None) -> ShutdownReport:
        """Stop a node whose event loop has closed under it: its sockets, tasks and backend
        ended with that loop (the backend was closed as it ended), so nothing is left to
        close; the report says so, and the node stays stopped."""
        ctx = self._ctx
        if restart is not None:
            ctx.shutdown_code = CloseCode.SERVICE_RESTART if restart else CloseCode.GOING_AWAY
        ctx.phase = Phase.STOPPED
        logger.info("node %s stopped: it ended with its event loop, nothing left to close "
                    "(other nodes reap its presence after node_ttl)", ctx.node_id)
        return ShutdownReport(0, 0, 0.0, close_code=int(ctx.shutdown_code))

    async def _shut_down(self, queued: list[tuple[Connection, int]],
                         deadline: float) -> ShutdownReport:
        ctx = self._ctx
        started = time.monotonic()
        if self._starting is not None:  # a start under way calls the backend until it ends
            # (bounded: each of its backend calls, and its wait for the subscription, has a
            # timeout; it spawns nothing once the node drains)
            await asyncio.shield(self._starting)
        code = ctx.shutdown_code
        logger.info("node %s shutting down: %d connections, close code %d", ctx.node_id,
                    len(queued), code)
        outcomes = await asyncio.gather(
            *(self._close_one(conn, int(code), deadline, frames) for conn, frames in queued))
        await self._acks.drain(deadline)  # the listener still runs: they are heard
        problems = await self._stop_everything(deadline)
        report = ShutdownReport(
            closed_count=sum(1 for clean, _, _ in outcomes if clean),
            failed_count=sum(1 for clean, _, _ in outcomes if not clean),
            duration_seconds=time.monotonic() - started,
            drained_frames=sum(drained for _, drained, _ in outcomes),
            dropped_frames=sum(dropped for _, _, dropped in outcomes),
            close_code=int(code),
        )
        ctx.phase = Phase.STOPPED
        logger.info("node %s stopped: closed=%d failed=%d in %.2fs", ctx.node_id,
                    report.closed_count, report.failed_count, report.duration_seconds)
        if problems:  # (logged too: every caller of the stop may have been cancelled)
            logger.warning("node %s stopped with errors: %s", ctx.node_id, "; ".join(problems))
            raise ShutdownError("shutdown finished with errors: " + "; ".join(problems))
        return report

    async def _close_one(self, conn: Connection, code: int, deadline: float,
                         queued: int) -> tuple[bool, int, int]:
        """Let the session of `conn` read what its client sent, drain its outbox (`queued`
        frames when the shutdown began) until the deadline, then close it: (clean, drained,
        dropped). Its settlement (the store's bookkeeping, the on_disconnect hooks) goes on
        in a closer task of the node, which the stop waits for until the deadline: it holds
        neither a cleanup slot, which the other sockets' closes wait for, nor the shutdown
        past its timeout."""
        closing = self._closing
        # (outside the slots: a handler still busy with what its client sent holds no slot)
        await closing.read_out(conn, deadline)
        async with closing.slots:
            left = await conn.flush(deadline)
            if not closing.detach(conn):
                return True, 0, 0
            loop = asyncio.get_running_loop()
            reason = shutdown_reason(code, self._ctx.config.retry_jitter)
            # as any close: the presence goes first (with the groups, where one step can), so
            # a join another node makes meanwhile finds the client gone, not a membership
            # that outlives it (the node's own removal at the end is for what is left)
            unregistered = Unregistered.KEPT
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - loop.time(), 0.05)):
                    unregistered = await closing.unregister(conn)
            clean = await closing.close_socket(conn, code, reason,
                                               max(deadline - loop.time(), 0.05))
        self._ctx.tasks.spawn(closing.settle(conn, code, "shutdown", None,
                                             unregistered=unregistered, by=deadline),
                              name=f"{_CLOSER_PREFIX}{conn.conn_id}")
        return clean, max(queued - left, 0), left

    async def _stop_everything(self, deadline: float) -> list[str]:
        ctx = self._ctx
        grace = ctx.config.close_timeout
        tasks = ctx.tasks
        problems = await tasks.stop(grace, prefix=_LOOP_PREFIX)
        self._acks.stop_listening()  # the listener is gone: no acknowledgement comes now
        # the closers' store work ends at the deadline (Settlement.settle's `by`); their
        # on_disconnect hooks get close_timeout more, then are cancelled with the rest
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.0) + grace
        await tasks.wait(tasks.running(_CLOSER_PREFIX), remaining)
        problems += await tasks.stop(grace)
        try:
            if ctx.backend.available:
                await ctx.ask(ctx.backend.liveness.unregister_node(), round_trips=4)
        except BackendUnavailable as exc:  # not a failure to stop: survivors reap it
            logger.warning("presence of node %s not removed (backend unavailable); other "
                           "nodes reap it after node_ttl: %s", ctx.node_id, exc)
        try:
            async with asyncio.timeout(ctx.config.op_timeout):
                await ctx.backend.aclose()
        except Exception as exc:
            problems.append(f"backend close: {exc!r}")
        return problems
