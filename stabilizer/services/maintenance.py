"""Maintenance: the loop that keeps a node registered and healthy.

Every ``node_ttl / 3`` seconds: refresh the node's liveness (reaping dead nodes), write its
report (counters for the dashboard), end expired sessions, re-register local presence after
an outage (closing sockets another node took meanwhile), sync the shared token keys (giving
the store back those it lost); every ``memory_check_interval`` seconds, on a schedule of its
own (pure/upkeep.py): enforce max_total_memory. Backend failures back off with jitter;
nothing but cancellation ends the loop.

An outage is settled when it is noticed, and again once the node's subscription is back,
because a kick or a MEMBERSHIP envelope published in between reached nobody. Settling makes
the local group memberships agree with the backend's (first giving the backend back the
memberships it lost, when it restarted or failed over, or reaped this node, but not those
of a client a newer connection on another node holds), then re-registers presence (closing
sockets another node took meanwhile).

A step that fails is not an outage by itself: under a burst of connects a busy loop reads a
reply late. Writes that failed asked for a resync each (a membership change that failed or
was cancelled puts only its client in doubt, settled alone at the next step); writes that
succeeded are lost only when the store restarts or fails over, which each step checks (the
store's incarnation). Only a store that cannot tell makes every failed step ask for a
resync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from stabilizer.backends.base import Presence, SessionGone, SessionTaken, UserLimit
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import SESSION_ROUND_TRIPS, NodeContext
from stabilizer.pure.text import backoff_delay, retry_advice
from stabilizer.pure.upkeep import UpkeepSchedule
from stabilizer.pure.users import parse_info
from stabilizer.services.memory import MemoryGuard
from stabilizer.services.reports import Reporter
from stabilizer.services.tokens import TokenService
from stabilizer.services.unlisting import Unlisting

logger = logging.getLogger(__name__)

#: Sessions one sweep script ends at most (it blocks Redis while it runs), and sweeps one
#: step runs at most: the clients of a dead node end within one step, so their presence
#: leaves arrive together (within presence_diff_window) instead of one batch per step.
SWEEP_LIMIT = 100
SWEEP_ROUNDS = 100

#: Closes this node's connection of a client (`conn_id`'s only) with a code and reason.
ClientCloser = Callable[[str, int, str, str | None], object]

#: Makes local group memberships agree with the backend's (restoring them there first).
GroupSettler = Callable[[Sequence[Connection], bool], Awaitable[None]]


class Maintenance:
    """Keepalive, reaping, resync, session sweep, token key and memory checks."""

    def __init__(self, ctx: NodeContext, memory: MemoryGuard, tokens: TokenService,
                 connections: Callable[[], list[Connection]],
                 kick: Callable[[str, str | None], None],
                 close_client: ClientCloser,
                 settle_groups: GroupSettler | None = None,
                 settle_doubted: Callable[[], Awaitable[None]] | None = None,
                 reporter: Reporter | None = None) -> None:
        self._ctx = ctx
        self._reporter = reporter
        self._memory = memory
        self._tokens = tokens
        self._connections = connections  # admitted, and still being admitted
        self._kick = kick  # closes a local connection another node holds the client of
        self._close_client = close_client  # closes one with a code: here, past the user limit
        self._settle_groups = settle_groups
        self._settle_doubted = settle_doubted  # the clients whose membership change failed
        self._joined = False
        self._incarnation: str | None = None  # the store's, at the last step (None: unknown)
        self._keys_due = False  # sync the shared token keys at the next step
        self._settle_due = False  # settle again once the subscription is back
        self._restore_groups = False  # the backend lost our memberships: give them back
        self._resubscribing = asyncio.Event()  # the listener lost its subscription
        self._lost_writes = False  # the store restarted or failed over since the last settle
        self._backend_log = RateLimitedLog(logger)
        self._unlisting = Unlisting(ctx, self._backend_log)  # after the settle's resync

    async def run(self) -> None:
        """Run until cancelled: the upkeep (step) and the memory check, each on its own
        schedule (pure/upkeep.py)."""
        config = self._ctx.config
        loop = asyncio.get_running_loop()
        schedule = UpkeepSchedule(config.node_ttl / 3, config.memory_check_interval,
                                  loop.time())
        failures = 0
        while True:
            upkeep_due, check_due = schedule.due(loop.time())
            if upkeep_due:
                failures = await self._upkeep(failures)
                schedule.upkept(loop.time(), backoff_delay(failures) if failures else None)
            if check_due:
                schedule.checked(loop.time())
                try:
                    self._memory.check()
                except Exception:
                    logger.exception("memory check failed; the loop goes on")
            if await self._pause(max(0.0, schedule.next_wake() - loop.time())):
                schedule.hurry(loop.time())

    def resubscribing(self) -> None:
        """The listener lost its subscription and subscribes again: the next upkeep runs as
        soon as it is back, so that its settle carries out the membership changes lost with
        it (MEMBERSHIP envelopes published to nobody) now rather than at the upkeep's time."""
        self._resubscribing.set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds`; True, sooner, once the subscription is back after a loss."""
        try:
            async with asyncio.timeout(seconds):
                await self._resubscribing.wait()
                if self._ctx.follows_others:
                    await self._ctx.backend.routing.subscribed.wait()
        except TimeoutError:
            return False
        self._resubscribing.clear()
        if not self._is_subscribed():  # (lost again since: wait for it once more)
            self._resubscribing.set()
        return True

    async def _upkeep(self, failures: int) -> int:
        """Run one step; return the failures in a row since the last that succeeded."""
        try:
            await self.step()
        except BackendUnavailable as exc:
            if self._incarnation is None:  # a failover would go unnoticed: resync
                self._ctx.want_resync()
            self._backend_log.warning("backend maintenance failed", exc=exc)
            return failures + 1
        except Exception:
            logger.exception("maintenance step failed; the loop goes on")
            return failures  # a bug, not an outage: no more backoff than before
        return 0

    async def step(self) -> None:
        """One round of backend upkeep.

        Raises:
            BackendUnavailable: the backend failed (the loop retries with backoff).
        """
        ctx = self._ctx
        config = ctx.config
        backend = ctx.backend
        await self._check_incarnation()
        liveness = await ctx.ask(backend.liveness.keepalive(config.node_ttl,
                                                            self._session_ttl()),
                                 round_trips=4)
        if self._reporter is not None:
            report = await self._reporter.next()  # (a slice of the pool per loop pass)
            await ctx.ask(backend.liveness.report(report))
        await self._settle_sessions()
        for _ in range(SWEEP_ROUNDS):
            if len(await ctx.ask(backend.sessions.sweep(SWEEP_LIMIT),
                                 round_trips=SESSION_ROUND_TRIPS)) < SWEEP_LIMIT:
                break
        if liveness.reaped:
            logger.warning("reaped presence of dead nodes %s", ", ".join(liveness.reaped))
        if liveness.rejoined and self._joined:
            logger.warning("node %s had vanished from the registry (or is being reaped); "
                           "re-registering", ctx.node_id)
            ctx.want_resync()
            self._restore_groups = True
        self._joined = True
        if ctx.take_resync():
            self._settle_due = True
            if not self._is_subscribed():
                await self._settle()  # now, and again once the subscription is back
        if self._settle_due and self._is_subscribed():
            self._settle_due = False
            try:
                await self._settle()
            except BaseException:
                self._settle_due = True
                raise
        if self._settle_doubted is not None:
            await self._settle_doubted()
        if self._keys_due or not self._tokens.has_key:  # (none yet: the start's sync failed)
            # after the store restarted or failed over (each step when it cannot tell): what
            # this node holds goes back to a store that lost it; a key another node gives
            # back later is learned when a token names it
            self._keys_due = not await self._tokens.sync_shared_keys()
        await self._unlisting.step()  # (last: it logs its own failures)

    async def _check_incarnation(self) -> None:
        """Ask for a resync when the store may have lost writes since the last step: it
        restarted, or a replica took over. Such a store may hold older data rather than
        none (a snapshot, a lagging replica), so the settle gives back the memberships it
        lacks, as after an empty restart, instead of taking it for the truth. A step that
        merely failed (a reply too slow for a busy loop, an outage of the same store) asks
        for none: each write that failed asked for its own."""
        ctx = self._ctx
        seen = await ctx.ask(ctx.backend.liveness.incarnation())
        if self._incarnation is not None and seen != self._incarnation:
            logger.warning("the backend restarted or failed over; re-registering presence")
            ctx.want_resync()
            self._restore_groups = True
            self._lost_writes = True
            self._keys_due = True
        elif seen is None:
            self._keys_due = True
        self._incarnation = seen

    async def _settle_sessions(self) -> None:
        """Put on the away list the sessions closes could not settle (the sweep that follows
        ends those due); a client connected again meanwhile owns its session: left alone."""
        ctx = self._ctx
        backend = ctx.backend
        unsettled = ctx.take_unsettled()
        for client_id, session_ttl in list(unsettled.items()):
            try:
                if await ctx.ask(backend.presence.locate(client_id)) is None:
                    await ctx.ask(backend.sessions.suspend(client_id, session_ttl))
            except BaseException:
                for left, ttl in unsettled.items():  # this one and the rest: next step
                    ctx.unsettled(left, ttl)
                raise
            del unsettled[client_id]

    def _is_subscribed(self) -> bool:
        ctx = self._ctx
        return not ctx.follows_others or ctx.backend.routing.subscribed.is_set()

    async def _settle(self) -> None:
        """Groups first (restored before the presence that tells a client is back), then
        presence: a socket another node took closes and hands its memberships over. The
        restore leaves out the clients the resync will not claim (a newer connection on
        another node holds them): what it handed over would be the old memberships. After
        the store lost writes, the check for memberships it gave back on the groups' side
        only follows, at this step and the next ones (unlisting.py): reading every group,
        it never stands between the node and its presence."""
        restore = self._restore_groups
        if self._settle_groups is not None:
            try:
                await self._settle_groups(list(self._ctx.pool.connections()), restore)
            except BaseException:
                self._ctx.want_resync()
                raise
        await self._resync(claim_all=restore)
        if self._lost_writes:  # (not after a reap: it takes memberships away, gives none)
            self._unlisting.begin()
        if restore:  # (a settle that failed gives back and claims again: both idempotent)
            self._restore_groups = False
            self._lost_writes = False

    async def _resync(self, *, claim_all: bool = False) -> None:
        """Register the local connections' presence again. `claim_all`: the store lost
        writes (it restarted or failed over, or reaped this node), so an entry of another
        node may be older than the one it overwrote here: every local connection claims its
        client (the newer connection keeps it)."""
        ctx = self._ctx
        listed_at = time.time()  # connections created from now on are not in the list
        conns = self._connections()
        local = [Presence(c.client_id, ctx.node_id, c.conn_id, c.created_at, c.user_id,
                          parse_info(c.info)) for c in conns]
        # a connection the store never recorded (admitted while it was unreachable) may take
        # its client back from an older connection elsewhere; a recorded one was overwritten
        # (unless the store lost that write: claim_all)
        claims = {c.client_id for c in conns if claim_all or not c.registered}
        limit = ctx.config.max_connections_per_user
        # a store that lost writes may hold seats of connections gone since (older data):
        # those it had admitted keep their seats rather than close for such a seat
        seated = frozenset(c.conn_id for c in conns if c.registered and self._lost_writes)
        try:
            resynced = await ctx.ask(ctx.backend.liveness.resync(
                local, claims=claims, session_ttl=self._session_ttl(), listed_at=listed_at,
                user_limit=None if limit is None else UserLimit(
                    limit, self._retry_advice(), seated)),
                round_trips=4 + len(local) // 200)
        except BaseException:
            ctx.want_resync()
            raise
        logger.info("presence of %d local clients re-registered", len(local))
        kept = set(resynced.lost)
        over = set(resynced.over_limit)
        back: list[Connection] = []
        for conn in conns:
            if conn.client_id in kept:
                self._kick(conn.client_id, conn.conn_id)
            elif (conn.client_id, conn.conn_id) not in over:
                conn.mark_registered(by_resync=True)
                back.append(conn)
        if resynced.over_limit:
            logger.warning("closing %d connections whose users hold max_connections_per_user "
                           "(%s) older ones", len(resynced.over_limit), limit)
        for client_id, conn_id in resynced.over_limit:
            logger.info("client %r (conn %s) is past its user's limit", client_id, conn_id)
            self._close_client(client_id, CloseCode.USER_LIMIT, self._retry_advice(), conn_id)
        if claim_all and ctx.config.history_enabled:
            await self._hold_sessions(back)
        await self._forget_departed(conns)

    async def _hold_sessions(self, conns: list[Connection]) -> None:
        """Hold the sessions of connections registered again after the store lost writes
        (or this node was reaped) as their open did: a reaper's suspend left each an expiry
        and a place on the away list, a store that lost writes may hold an older holder or
        expiry, while their clients are still connected here. Only the pool's connections
        (whose sessions are open: one still being admitted opens its own); one that leaves
        meanwhile has its session suspended again, in case its close's came first."""
        ctx = self._ctx
        sessions = ctx.backend.sessions
        pooled = {conn.conn_id for conn in ctx.pool.connections()}
        held = [conn for conn in conns if conn.conn_id in pooled]
        outcomes = await asyncio.gather(*(  # (the backend batches them: batcher.py)
            ctx.ask(sessions.activate(conn.client_id, fresh=False, user_id=conn.user_id,
                                      conn_id=conn.conn_id), round_trips=SESSION_ROUND_TRIPS)
            for conn in held), return_exceptions=True)
        lost = [conn.client_id for conn, outcome in zip(held, outcomes, strict=True)
                if isinstance(outcome, SessionGone)]
        if lost:  # (its client's next resume begins afresh)
            logger.warning("the sessions of %d connected clients were lost (e.g. %r)",
                           len(lost), lost[0])
        failed = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)
                       and not isinstance(outcome, (SessionGone, SessionTaken))), None)
        here = {conn.conn_id for conn in ctx.pool.connections()}
        ttl = self._session_ttl()
        for conn in held:
            if conn.conn_id not in here:
                await ctx.ask(sessions.suspend(conn.client_id, ttl, conn_id=conn.conn_id),
                              round_trips=SESSION_ROUND_TRIPS)
        if failed is not None:
            ctx.want_resync()  # (the settle runs again, the hold with it)
            raise failed

    def _retry_advice(self) -> str:
        """The close reason of a connection past its user's limit: as a refused connect's."""
        return retry_advice(self._ctx.config.retry_jitter)

    async def _forget_departed(self, listed: list[Connection]) -> None:
        """Undo the resync for connections that left while it ran: their unregister may
        have come first, and the resync wrote them back. Each removal names the conn id,
        so a newer connection of the same client is never removed."""
        ctx = self._ctx
        here = {conn.conn_id for conn in self._connections()}
        departed = [conn for conn in listed if conn.conn_id not in here]
        if not departed:
            return
        presence = ctx.backend.presence
        outcomes = await asyncio.gather(  # one pipeline: calls made in one loop turn share it
            *(ctx.ask(presence.unregister(conn.client_id, conn.conn_id)) for conn in departed),
            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BackendUnavailable):
                ctx.want_resync()  # the next resync forgets what is left
                self._backend_log.warning("presence of a client that left during a resync "
                                          "not removed (backend unavailable)", exc=outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    def _session_ttl(self) -> float:
        """How long a reaped or forgotten client's session stays resumable."""
        config = self._ctx.config
        return config.session_ttl if config.history_enabled else 0.0
