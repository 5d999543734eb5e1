"""Liveness: the one heartbeat loop of a node, pongs, and ping() round trips.

The loop sleeps until the schedule's next entry (pure/schedule.py), pings every connection
that is due with one frame, serialized and framed once (a prepared frame where the server
allows: connection/transports.py), and hands the ones whose deadline passed to
`on_timeout`. Any inbound frame counts as an answer; a session's pongs are taken where its
server reads them when it allows (connection/pongs.py).

With an inbound rate limit, the pong answering each ping sent is free and any other counts
against it (pure/rate.py): past the limit it is dropped, or the connection is closed with
1013 (`retire`). Without one, pongs are taken as they always were: nothing is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from stabilizer.config import CloseCode, HeartbeatType, RateLimitAction
from stabilizer.connection.connection import Connection
from stabilizer.connection.pongs import PongWatch
from stabilizer.connection.sockets import Frame
from stabilizer.errors import ConnectionNotFoundError, ConnectionTimeoutError
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import ping_body, ping_frame
from stabilizer.pure.rate import over_rate_reason
from stabilizer.pure.schedule import HeartbeatSchedule

logger = logging.getLogger(__name__)

_IDLE_WAKE: Final = 3600.0


class Liveness:
    """Heartbeat bookkeeping for the connections of one node."""

    def __init__(self, ctx: NodeContext, on_timeout: Callable[[Connection], None],
                 retire: Callable[[Connection, int, str], None]) -> None:
        config = ctx.config
        self._ctx = ctx
        self._on_timeout = on_timeout
        self._retire = retire  # closes a connection over the rate limit (action close)
        self.schedule: HeartbeatSchedule[Connection] = HeartbeatSchedule(
            config.heartbeat_interval, config.heartbeat_timeout,
            send_pings=config.heartbeat_type is HeartbeatType.PING,
        )
        self._wakeup = asyncio.Event()
        # (chosen once: without a rate limit, pings and pongs take the paths they always did)
        limited = config.rate_limit_messages is not None
        self._pongs = PongWatch(self._answered_within_rate if limited else self._answered)
        self._offer_ping: Callable[[Connection, Frame, float], bool] = (
            self._offer_counted if limited else self._offer)

    def track(self, conn: Connection) -> None:
        """Watch a new connection, waking the loop if it is now the earliest; one that is
        closing already is not (its forget() has run: the schedule would hold it for good)."""
        if not conn.is_open:
            return
        if self.schedule.track(conn, asyncio.get_running_loop().time()):
            self._wakeup.set()

    def forget(self, conn: Connection) -> None:
        """Stop watching `conn` (it is closing); its server reads its pongs again."""
        self.schedule.forget(conn)
        self._pongs.unwatch(conn)

    def heard_from(self, conn: Connection) -> None:
        """Inbound traffic on `conn`: it is alive, and answers any pending ping()."""
        conn.heard(time.monotonic())
        self.schedule.seen(conn, asyncio.get_running_loop().time())

    def take_pongs(self, conn: Connection) -> bool:
        """Count `conn`'s pongs where its server reads them (connection/pongs.py), so they
        never wake its session's receive loop; False when its server does not allow it."""
        return self._pongs.watch(conn)

    def _answered(self, conn: Connection) -> None:
        self._ctx.stats.pongs += 1
        self.heard_from(conn)

    def _answered_within_rate(self, conn: Connection) -> None:
        """A pong taken where the server read it, under a rate limit: free when it answers a
        ping, else it spends a token; past the limit it is dropped or closes the connection.
        """
        rate = conn.rate
        if rate is None or rate.take_pong(time.monotonic()):
            self._answered(conn)
            return
        self.heard_from(conn)  # any frame proves the client alive, a dropped one too
        ctx = self._ctx
        ctx.stats.rate_limited += 1
        if ctx.config.rate_limit_action is RateLimitAction.CLOSE:
            self._retire(conn, CloseCode.TRY_AGAIN_LATER, over_rate_reason(ctx.config))

    def pong(self, client_id: str) -> None:
        """A pong from a local client (unknown ids are ignored)."""
        conn = self._ctx.pool.get(client_id)
        if conn is not None:
            self._ctx.stats.pongs += 1
            self.heard_from(conn)

    async def ping(self, conn: Connection, timeout: float | None) -> float:
        """Ping `conn` now; return the round-trip time in seconds.

        Raises:
            ConnectionNotFoundError: the connection closed before it answered.
            ConnectionTimeoutError: no answer within `timeout` (default heartbeat_timeout).
        """
        waiter = conn.pong_waiter()
        sent_at = time.monotonic()
        self._offer_ping(conn, self._ping(), sent_at)
        limit = self._ctx.config.heartbeat_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                answered_at = await waiter
        except TimeoutError as exc:
            raise ConnectionTimeoutError(
                f"client {conn.client_id!r} did not answer a ping within {limit:g}s"
            ) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if waiter.cancelled() and task is not None and task.cancelling() == 0:
                raise ConnectionNotFoundError(
                    f"client {conn.client_id!r} disconnected before answering") from None
            raise
        return answered_at - sent_at

    async def run(self) -> None:
        """Ping and expire connections until cancelled; survives errors in its steps."""
        loop = asyncio.get_running_loop()
        while True:
            wake = self.schedule.next_wake()
            delay = _IDLE_WAKE if wake is None else wake - loop.time()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                continue
            await self._step(loop.time())

    async def _step(self, now: float) -> None:
        # A method of its own so the lists of due connections die with it, and a closed
        # connection is not held by this frame while the loop sleeps.
        to_ping, expired = self.schedule.due(now)
        try:
            self._expire(expired)
            if to_ping:
                await self._send_pings(to_ping)
        except Exception:
            logger.exception("heartbeat step failed; the loop goes on")

    async def _send_pings(self, conns: list[Connection]) -> None:
        frame = self._ping()
        now = time.monotonic()
        stats = self._ctx.stats
        slice_size = self._ctx.config.max_concurrent_broadcast
        for start in range(0, len(conns), slice_size):
            for conn in conns[start:start + slice_size]:
                self._offer_ping(conn, frame, now)
            stats.pings_sent += min(slice_size, len(conns) - start)
            if start + slice_size < len(conns):
                await asyncio.sleep(0)

    @staticmethod
    def _ping() -> Frame:
        now = time.time()
        # a control frame (v2 clients get it as is); the body is for send_json sockets
        return Frame.control(ping_frame(now), ping_body(now))

    def _offer(self, conn: Connection, frame: Frame, now: float) -> bool:
        if not conn.offer(frame, now):
            return False
        self._ctx.stats.messages_out += 1
        self._ctx.stats.bytes_out += frame.size
        return True

    def _offer_counted(self, conn: Connection, frame: Frame, now: float) -> bool:
        """Offer a ping under a rate limit: the pong answering it will be free."""
        if not self._offer(conn, frame, now):
            return False
        if conn.rate is not None:
            conn.rate.pinged()
        return True

    def _expire(self, conns: list[Connection]) -> None:
        for conn in conns:
            if conn.is_open:
                self._ctx.stats.heartbeat_timeouts += 1
                logger.info("client %r missed its heartbeat deadline; closing", conn.client_id)
                self._on_timeout(conn)
