"""Local fan-out: one frame to the local recipients of a target, without waiting on a socket.

The one place that picks recipients (everyone, a group's local members, one client, one
user's connections) for both delivery modes. A large fan-out yields to the loop every
max_concurrent_broadcast recipients, so it never stalls the node; fan-outs do not
interleave (a second one waits while one that yields runs), so each connection gets
frames in the order their fan-outs began.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.acks import FORGOTTEN, UNSUPPORTED
from stabilizer.pure.streams import Target
from stabilizer.results import BroadcastResult
from stabilizer.services.delivery.groups import Membership


class FanOut:
    """Gives frames to local connections and counts what they took."""

    def __init__(self, ctx: NodeContext, membership: Membership) -> None:
        self._ctx = ctx
        self._membership = membership
        #: told (token, outcome, client id) of a frame whose recipient cannot acknowledge
        #: it (a plain client: UNSUPPORTED) or no longer can (too many unacknowledged, or
        #: it ended without a session to resume: FORGOTTEN)
        self.on_unackable: Callable[[str, str, str], None] = _ignore
        self._lane = asyncio.Lock()  # held by a fan-out that yields (see deliver)

    def offer(self, conn: Connection, frame: Frame) -> bool:
        """Give `conn` a frame now (counted in the node's stats)."""
        return self._count(self.hand(conn, frame, time.monotonic()), frame)

    def hand(self, conn: Connection, frame: Frame, now: float) -> bool:
        """Give `conn` a frame now, uncounted (a resume's replay): the sender of the
        acknowledgement it asks for is told if `conn` cannot give it, and those of the
        tokens `conn` forgot for it are told theirs will not come."""
        if frame.ack is None:
            return conn.offer(frame, now)
        self._asking(conn, frame.ack)
        try:
            return conn.offer(frame, now)
        finally:
            self._report_forgotten(conn)

    def ended(self, conn: Connection) -> None:
        """`conn` ended, and no replay will carry the tokens it awaits again (no history, or
        its session ended): tell their senders none of them will be acknowledged."""
        self._report_forgotten(conn, awaited=True)

    def _count(self, offered: bool, frame: Frame) -> bool:
        if offered:
            self._ctx.stats.messages_out += 1
            self._ctx.stats.bytes_out += frame.size
            return True
        return False

    def _asking(self, conn: Connection, token: str) -> None:
        """`conn` is about to get a frame asking for `token`: a plain client cannot."""
        if conn.protocol < 2:
            self.on_unackable(token, UNSUPPORTED, conn.client_id)

    def _report_forgotten(self, conn: Connection, *, awaited: bool = False) -> None:
        for token in conn.take_forgotten(awaited=awaited):
            self.on_unackable(token, FORGOTTEN, conn.client_id)

    async def deliver(
        self, target: Target, frame: Frame, exclude: str | None = None, *,
        stream: str | None = None, offset: int | None = None, epoch: str | None = None,
        reached: list[str] | None = None,
    ) -> BroadcastResult:
        """Give `frame` to the local recipients of `target` except `exclude`; a sequenced
        frame carries its (stream, offset, epoch) so a resuming client gets it exactly
        once. The client ids of the recipients that took it go into `reached`, if given."""
        if target.kind == "client":
            conn = self._ctx.pool.get(target.name)
            if conn is None:
                return BroadcastResult(0, 0, 0)
            shards: Iterable[list[Connection]] = [[conn]]
            size = 1
        elif target.kind == "group":
            members = self._membership.local_members(target.name)
            if not members:
                return BroadcastResult(0, 0, 0)
            shards = [list(members)]
            size = len(members)
            frame.channel = target.name  # v2 clients are told (with history: the stream)
        elif target.kind == "user":
            seats = self._ctx.pool.of_user(target.name)
            if not seats:
                return BroadcastResult(0, 0, 0)
            shards = [seats]
            size = len(seats)
        else:
            shards = self._ctx.pool.shards()
            size = len(self._ctx.pool)
        if size > self._ctx.config.max_concurrent_broadcast or self._lane.locked():
            # a fan-out that yields takes the lane, and one that finds it taken waits: fan-
            # outs run one after another, so that every connection gets frames in the
            # order their fan-outs began, though a large one gives the loop turns
            async with self._lane:
                return await self._fan_out(shards, frame, exclude, stream, offset, epoch,
                                           reached)
        return await self._fan_out(shards, frame, exclude, stream, offset, epoch, reached)

    async def deliver_publishing(self, target: Target, frame: Frame, exclude: str | None,
                                 sending: Awaitable[int] | None,
                                 log: RateLimitedLog) -> BroadcastResult:
        """Deliver `frame` locally while `sending` (the publish to the other nodes, if any)
        runs: the publish is on the wire before the local fan-out starts, its outcome goes
        into the result (`remote_nodes`, or `remote_error`, logged to `log`), and it is
        cancelled with the caller."""
        ctx = self._ctx
        publish = (None if sending is None
                   else ctx.tasks.spawn(ctx.ask(sending), name="stabilizer-publish"))
        try:
            if publish is not None:
                await asyncio.sleep(0)  # let the publish reach the wire first
            result = await self.deliver(target, frame, exclude)
            if publish is not None:
                try:
                    result.remote_nodes = await publish
                except BackendUnavailable as exc:
                    result.remote_error = f"other nodes not reached: {exc}"
                    log.warning("delivered locally only: %s", result.remote_error)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # our caller was cancelled
                    result.remote_error = "other nodes not reached: the node is stopping"
            return result
        finally:
            if publish is not None and not publish.done():
                publish.cancel()

    async def _fan_out(
        self, shards: Iterable[list[Connection]], frame: Frame, exclude: str | None,
        stream: str | None, offset: int | None, epoch: str | None,
        reached: list[str] | None = None,
    ) -> BroadcastResult:
        started = time.perf_counter()
        result = BroadcastResult(0, 0, 0)
        slice_size = self._ctx.config.max_concurrent_broadcast
        budget = slice_size
        ack = frame.ack
        total = succeeded = 0
        for shard in shards:
            now = time.monotonic()
            for conn in shard:
                if exclude is not None and conn.client_id == exclude:
                    continue
                if ack is not None:
                    self._asking(conn, ack)
                total += 1
                delivered = conn.deliver(frame, now, stream, offset, epoch)
                if ack is not None:
                    self._report_forgotten(conn)
                if delivered:
                    succeeded += 1
                    if reached is not None:
                        reached.append(conn.client_id)
                else:
                    result.errors.append((conn.client_id, "outbox full or connection closing"))
                budget -= 1
                if budget <= 0:  # (within a shard too: a group's recipients are one list)
                    budget = slice_size
                    await asyncio.sleep(0)
                    now = time.monotonic()
        result.total, result.succeeded, result.failed = total, succeeded, total - succeeded
        stats = self._ctx.stats
        stats.messages_out += result.succeeded
        stats.bytes_out += result.succeeded * frame.size
        if result.total:
            stats.fanout_seconds.observe(time.perf_counter() - started)
        return result


def _ignore(token: str, outcome: str, client_id: str) -> None:
    """No one waits for acknowledgements."""
