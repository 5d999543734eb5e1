"""SequencedRouter: delivery with history (``history_size > 0``).

Every message is sequenced by the backend (offset + epoch, appended to a bounded stream) and
reaches every node, this one included, through its subscription, so all nodes deliver each
stream in the same order. A node that sees a gap in a stream's offsets fills it from history
before going on, and tells its clients to resync when it cannot; after a resubscription it
catches up every stream it follows (the last message of a stream has no successor to reveal
its loss), each before the stream's next live message.

A node follows every stream a local connection receives from where the connection's promise
begins: a fresh session's baselines, a resumed client's positions. A new epoch (the stream
expired, or Redis lost it) starts at offset 1; a node that missed some of a new epoch lost
what the old one held after its last message too, and tells the stream's clients so. A
stream the store no longer holds at all expired (nothing was sent for longer than its meta
TTL) or was lost (Redis restarted empty, failed over, evicted it); the node tells the two
apart by when it last delivered from that stream (see StreamOrder.lost_if_absent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing

from stabilizer.backends.base import History
from stabilizer.config import WebSocketConfig
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendNotReached, BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.acks import ack_token
from stabilizer.pure.frames import message_frame, resume_frame
from stabilizer.pure.streams import Step, StreamOrder, Target
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.results import BroadcastResult
from stabilizer.services.delivery.fanout import FanOut
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.history_pages import Page, history_pages

logger = logging.getLogger(__name__)


def stream_meta_ttl(config: WebSocketConfig) -> float:
    """How long a stream's offset and epoch outlive its last message: past a session's
    life, so that a missing stream reads as "nothing was published since"."""
    return max(config.history_ttl, config.session_ttl) + 60.0


def history_frame(stream: str, envelope: Envelope) -> Frame:
    """The client frame of a sequenced envelope (a direct message sent with an ack
    reference asks its client to acknowledge it)."""
    assert envelope.payload is not None
    token = (ack_token(envelope.origin, envelope.ref) if envelope.ref is not None
             and envelope.kind in (Kind.DIRECT, Kind.USER) else None)
    frame = Frame.text(message_frame(stream, envelope.offset, envelope.epoch,
                                     envelope.payload, token))
    frame.ack = token
    return frame


class SequencedRouter:
    """Ordered, gap-filled delivery of sequenced streams."""

    def __init__(self, ctx: NodeContext, fanout: FanOut, membership: Membership) -> None:
        self._ctx = ctx
        self._fanout = fanout
        self._membership = membership
        self.order = StreamOrder()
        self._lock = asyncio.Lock()  # the listener and a catch-up take turns
        self._catching_up: asyncio.Task[None] | None = None
        # followed streams not read from history since the subscription was last lost: each
        # is caught up before its next live message (or by the catch-up task, if none comes)
        self._stale: set[str] = set()
        self._backend_log = RateLimitedLog(logger)

    async def publish(self, target: Target, payload: str | bytes, exclude: str | None,
                      value: object = None) -> BroadcastResult:
        """Sequence through the backend (every node delivers it from its subscription); if
        the backend certainly was not reached, deliver to local recipients without a
        position; if it did not answer, deliver nothing here (see _sequence)."""
        kind = Kind.BROADCAST if target.kind == "all" else Kind.GROUP
        envelope = Envelope(kind, self._ctx.node_id, target.name or None, payload, exclude)
        if target.kind == "group" and not self._ctx.config.keeps_history(target.name):
            return await self._publish_live(target, envelope)
        return await self._sequence(target, envelope)

    async def _publish_live(self, target: Target, envelope: Envelope) -> BroadcastResult:
        """A group whose namespace keeps no history: no position, no stream entry. The
        other nodes get the envelope in one publish (their listener delivers it as it
        comes); local members get it at once, with null offset and epoch (section 4 of
        docs/protocol.md: deliver it, record no position)."""
        sending = self._ctx.backend.groups.publish(target.name, encode(envelope))
        return await self._fanout.deliver_publishing(
            target, history_frame(target.stream, envelope), envelope.exclude, sending,
            self._backend_log)

    async def send(self, client_id: str, payload: str | bytes, value: object = None,
                   ack: str | None = None) -> bool:
        """Sequence on the client's stream: kept for it while its session is resumable."""
        envelope = Envelope(Kind.DIRECT, self._ctx.node_id, client_id, payload, ref=ack)
        result = await self._sequence(Target("client", client_id), envelope)
        return bool(result.offset) or result.succeeded > 0

    async def send_to_user(self, user_id: str, payload: str | bytes,
                           value: object = None, ack: str | None = None) -> list[str]:
        """Sequence on the user's stream; every node holding one of its connections delivers
        it (this one included, from its subscription)."""
        envelope = Envelope(Kind.USER, self._ctx.node_id, user_id, payload, ref=ack)
        reached: list[str] = []
        await self._sequence(Target("user", user_id), envelope, reached)
        return reached

    async def _sequence(self, target: Target, envelope: Envelope,
                        reached: list[str] | None = None) -> BroadcastResult:
        """Sequence `envelope` on `target`'s stream (see publish); the client ids of the
        connections a client or user target reached go into `reached`, if given."""
        ctx = self._ctx
        config = ctx.config
        try:
            done = await ctx.ask(ctx.backend.history.sequence(
                target, envelope, size=config.history_size, ttl=config.history_ttl,
                meta_ttl=stream_meta_ttl(config)))
        except BackendNotReached as exc:  # certainly not sequenced: local clients only
            assert envelope.payload is not None
            frame = history_frame(target.stream, envelope)  # (no offset: not sequenced)
            result = await self._fanout.deliver(target, frame, envelope.exclude,
                                                reached=reached)
            result.remote_error = f"not sequenced, delivered locally only: {exc}"
            self._backend_log.warning("history unavailable: %s", result.remote_error)
            return result
        except BackendUnavailable as exc:
            # Sent but not answered: if the script ran, every node (this one included)
            # delivers the message from its stream, so a local copy now would be a second.
            result = BroadcastResult(0, 0, 0)
            result.remote_error = (f"outcome unknown, not delivered locally: {exc}; if it was "
                                   "sequenced, every node delivers it from its stream")
            self._backend_log.warning("history did not answer: %s", result.remote_error)
            return result
        result = BroadcastResult(0, 0, 0)
        result.offset, result.epoch = done.offset, done.epoch
        # every node follows "all", this one included; a group only where it has members
        own = target.kind == "all" or (target.kind == "group"
                                       and self._membership.follows(target.name))
        result.remote_nodes = max(done.receivers - own, 0)
        if reached is not None:
            reached.extend(done.clients)
        return result

    async def receive(self, envelope: Envelope) -> None:
        """Deliver a sequenced envelope in order (filling a gap first); an unsequenced one
        from another node (a node with history off) as it comes."""
        stream = envelope.stream
        if stream is None or envelope.payload is None:
            return
        if envelope.offset is None or envelope.epoch is None:
            if envelope.origin != self._ctx.node_id:
                await self._deliver(stream, envelope, self._unsequenced_frame(stream, envelope))
            return
        async with self._lock:
            if stream in self._stale:  # what the lost subscription missed comes first
                self._stale.discard(stream)
                await self._fill(stream, epoch=envelope.epoch)
            step = self.order.classify(stream, envelope.offset, envelope.epoch)
            if step is Step.DUPLICATE or await self._superseded(stream, envelope.epoch):
                return
            if step is Step.GAP:
                self._ctx.stats.stream_gaps += 1
                await self._fill(stream, before=envelope.offset, epoch=envelope.epoch)
            await self._deliver_in_order(stream, envelope)

    async def _superseded(self, stream: str, epoch: str) -> bool:
        """Whether a message of `epoch` on `stream`, which this node follows in another
        epoch, belongs to an epoch the store has left: one sent before Redis lost the
        stream and held up in the network (a slow link delivers it after the node followed
        the new epoch, from a resume's positions or its first messages). Epochs are not
        ordered, so the store is asked (one read per change of epoch): a message of the
        epoch it holds now, or one it cannot tell (no answer, or nothing held), is new."""
        last = self.order.last(stream)
        if last is None or last[1] in ("", epoch):
            return False
        found = await self._read(stream)
        if found is None or found.absent or found.epoch == epoch:
            return False
        logger.warning("stream %s: dropped a message of epoch %s, which the store has left "
                       "(this node follows epoch %s)", stream, epoch,
                       found.epoch or last[1])
        return True

    def _unsequenced_frame(self, stream: str, envelope: Envelope) -> Frame:
        """A group's message of a namespace without history comes with null positions, as
        the sender's own clients got it; another unsequenced one (from a node with history
        off) as it was sent."""
        assert envelope.payload is not None
        destination = envelope.destination
        if (destination is not None and destination.kind == "group"
                and not self._ctx.config.keeps_history(destination.name)):
            return history_frame(stream, envelope)
        return Frame.of(envelope.payload)

    async def _deliver_in_order(self, stream: str, envelope: Envelope) -> None:
        assert envelope.offset is not None
        assert envelope.epoch is not None
        self.order.advance(stream, envelope.offset, envelope.epoch, time.monotonic())
        await self._deliver(stream, envelope, history_frame(stream, envelope))

    async def _deliver(self, stream: str, envelope: Envelope, frame: Frame) -> None:
        destination = envelope.destination
        if destination is not None:
            await self._fanout.deliver(destination, frame, envelope.exclude, stream=stream,
                                       offset=envelope.offset, epoch=envelope.epoch)

    async def _fill(self, stream: str, *, before: int | None = None,
                    epoch: str | None = None) -> None:
        """Deliver what `stream` holds after the last offset delivered here (up to `before`,
        when a message of `epoch` revealed the gap), a page at a time; tell the stream's
        local clients to resync when the history does not cover it."""
        last = self.order.last(stream)
        if last is None:
            return
        ended = False
        if epoch is not None and last[1] not in ("", epoch):
            ended = True  # part of a new epoch was missed: the old one's end may have been
            self._epoch_ended(stream, last, epoch)
        through = None if before is None else before - 1
        async with AsyncExitStack() as stack:
            pages = await stack.enter_async_context(aclosing(self._pages(stream, through)))
            found = (page := await anext(pages)).found
            if found.epoch is not None and not ended:
                ended = True
                self._epoch_ended(stream, last, found.epoch)
                pages = await stack.enter_async_context(aclosing(self._pages(stream, through)))
                found = (page := await anext(pages)).found
            if found.absent and not ended and self._lost(stream, last):
                return
            if not found.covered:
                if not ended:  # (the clients were told already)
                    logger.warning("stream %s after offset %d could not be recovered",
                                   stream, last[0])
                    self._tell_to_resync(stream)
                return
            filled = await self._deliver_pages(stream, page, pages, before)
        if filled is None:
            return
        reached = self.order.last(stream)
        if (before is not None and reached is not None and reached[1] == epoch
                and reached[0] < before - 1):
            # the stream is gone (the store lost it) or holds less than the gap: whatever
            # came between is lost, which the clients must be told before what follows it
            logger.warning("stream %s: offsets %d to %d of epoch %s are gone", stream,
                           reached[0] + 1, before - 1, epoch)
            self._tell_to_resync(stream)
            return
        if before is not None or filled:
            self._ctx.stats.gaps_filled += 1

    def _pages(self, stream: str, through: int | None) -> AsyncGenerator[Page, None]:
        """The history of `stream` after its last offset delivered here, page by page."""
        last = self.order.last(stream)
        assert last is not None
        return history_pages(self._ctx, stream, *last, through=through)

    async def _deliver_pages(self, stream: str, first: Page, rest: AsyncGenerator[Page, None],
                             before: int | None) -> int | None:
        """Deliver what `first` (a page that gave the stream back) and the pages after it
        hold next (before `before`), a page before the next is read: how many; None (its
        clients told to resync) when a later page did not give the stream back."""
        filled = 0
        page: Page | None = first
        while page is not None and self.order.last(stream) is not None:  # (or unfollowed)
            if not page.found.covered:
                logger.warning("stream %s after offset %d could not be recovered (read a "
                               "page at a time)", stream, (self.order.last(stream) or (0,))[0])
                self._tell_to_resync(stream)
                return None
            for missed in page.envelopes:
                assert missed.offset is not None
                assert missed.epoch is not None
                if before is not None and missed.offset >= before:
                    continue
                if self.order.classify(stream, missed.offset, missed.epoch) is Step.DELIVER:
                    await self._deliver_in_order(stream, missed)
                    filled += 1
            page = await anext(rest, None)
        return filled

    async def _read(self, stream: str) -> History | None:
        """What the store holds of `stream` after its last offset delivered here, one entry
        at most (enough to tell its epoch); None when the backend did not answer."""
        last = self.order.last(stream)
        assert last is not None
        try:
            return await self._ctx.ask(self._ctx.backend.history.read(stream, *last,
                                                                      max_entries=1))
        except BackendUnavailable:
            return None

    def _lost(self, stream: str, last: tuple[int, str]) -> bool:
        """The store holds nothing of `stream`: if this node delivered from it too recently
        for it to have expired, the store lost it (with whatever came after `last`): tell its
        clients to resync before anything newer, and follow it from the next epoch's start.
        False (nothing done) when it may have expired: then nothing was sent since."""
        if not self.order.lost_if_absent(stream, time.monotonic(),
                                         stream_meta_ttl(self._ctx.config)):
            return False
        logger.warning("stream %s is gone from the store though this node delivered offset "
                       "%d of epoch %s within its TTL: lost, its clients resync", stream,
                       *last)
        self._tell_to_resync(stream)
        self.order.start_over(stream, "")
        return True

    def _epoch_ended(self, stream: str, last: tuple[int, str], epoch: str) -> None:
        """`stream` went on in `epoch` after this node's last message of the one before: what
        that one held after it is gone. Its clients resync; the new one is delivered from
        its start."""
        logger.warning("stream %s began epoch %s after offset %d of epoch %s, not all of "
                       "which this node delivered", stream, epoch, last[0], last[1])
        self._tell_to_resync(stream)
        self.order.start_over(stream, epoch)

    def resubscribing(self) -> None:
        """Catch up every followed stream once the new subscription is confirmed (one
        catch-up task at a time, however often the subscription is lost meanwhile)."""
        self._stale.update(self.order.streams())
        self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = self._ctx.tasks.spawn(self._catch_up_when_subscribed(),
                                                      name="stabilizer-catch-up")

    async def _catch_up_when_subscribed(self) -> None:
        subscribed = self._ctx.backend.routing.subscribed
        while self._stale:  # (a loss during a catch-up makes streams stale again)
            await subscribed.wait()
            try:
                await self.catch_up()
            except Exception:
                logger.exception("catching up after a resubscription failed")
                return

    async def catch_up(self) -> None:
        """Deliver what every followed stream received while the subscription was down
        (those its listener has not caught up already)."""
        subscribed = self._ctx.backend.routing.subscribed
        async with self._lock:
            while self._stale and subscribed.is_set():
                await self._fill(self._stale.pop())

    def follow(self, stream: str, offset: int, epoch: str) -> None:
        """A local connection receives `stream` from (offset, epoch) on (a fresh session's
        baseline, a resumed client's position the store vouched for): follow it from there
        if this node does not yet, so that a catch-up covers what is lost after it. A
        stream followed from before any epoch learns the epoch it is in (from its start:
        what this node has not delivered of it comes as a gap, its connections skipping
        what they hold), so that a late message of an earlier epoch is told from a newer
        one (`_superseded`)."""
        last = self.order.last(stream)
        if last is None:
            self.order.start(stream, offset, epoch)
            if not self._ctx.backend.routing.subscribed.is_set():
                self._stale.add(stream)  # (what the subscription loses meanwhile)
                self._catch_up_soon()
        elif last == (0, "") and epoch:
            self.order.start_over(stream, epoch)

    def delivered_after(self, stream: str, offset: int, epoch: str) -> bool:
        """True when this node delivered messages of `stream` after (offset, epoch) already:
        of that epoch, or of any when the stream held nothing then (epoch "")."""
        last = self.order.last(stream)
        return (last is not None and last[0] > offset
                and (last[1] == epoch or (not epoch and bool(last[1]))))

    def unfollow(self, stream: str) -> None:
        """Forget the order of a stream no local connection receives."""
        self.order.forget(stream)
        self._stale.discard(stream)

    def _tell_to_resync(self, stream: str) -> None:
        frame = Frame.text(resume_frame(0, [stream]))
        now = time.monotonic()
        for conn in self._subscribers(stream):
            conn.deliver(frame, now)

    def _subscribers(self, stream: str) -> list[Connection]:
        target = Target.of_stream(stream)
        if target is None:
            return []
        if target.kind == "all":
            return list(self._ctx.pool.connections())
        if target.kind == "group":
            return list(self._membership.local_members(target.name))
        if target.kind == "user":
            return self._ctx.pool.of_user(target.name)
        conn = self._ctx.pool.get(target.name)
        return [] if conn is None else [conn]
