"""Resume (history on): restore a returning client's groups and user data, replay what it
missed since the positions it holds, then let live traffic through, without duplicates."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import aclosing

import msgpack

from stabilizer.backends.base import SessionGone, SessionState, SessionTaken
from stabilizer.config import CloseCode
from stabilizer.connection.connection import Connection, State
from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import SESSION_ROUND_TRIPS, NodeContext
from stabilizer.pure.frames import resume_frame, unsubscribed_frame
from stabilizer.pure.positions import Positions, replay_start
from stabilizer.pure.streams import ALL, Target, client_stream, group_stream, user_stream
from stabilizer.pure.text import retry_advice
from stabilizer.services.delivery.fanout import FanOut
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.history_pages import history_pages
from stabilizer.services.delivery.sequenced import SequencedRouter, history_frame

logger = logging.getLogger(__name__)


class Resume:
    """Brings a resumed connection up to date; its live frames are held meanwhile."""

    def __init__(self, ctx: NodeContext, membership: Membership,
                 router: SequencedRouter, fanout: FanOut,
                 retire: Callable[[Connection, int, str], None] | None = None) -> None:
        self._ctx = ctx
        self._retire = retire  # the closing service's: close a connection in a task
        self._membership = membership
        self._router = router
        self._fanout = fanout  # hands the replay's frames over, reporting their tokens
        self._backend_log = RateLimitedLog(logger)

    async def resume(self, conn: Connection, positions: Positions,
                     channels: Collection[str] = ()) -> tuple[bool, int, list[str]]:
        """Replay what `conn` missed; return (recovered, replayed, failed streams).

        A v2 client is first told (``unsubscribed``) of each group it held that the
        resumed session no longer has (the server took it out while it was away): those
        it names in `channels`, and those it holds a position in (``g:<group>``).

        Only the client's own streams are replayed: ``all``, its groups (but those of a
        namespace without history), ``c:<client_id>`` and, for a user's connection,
        ``u:<user_id>``.
        A stream the client holds no position for is replayed from where it stood when the
        session began (or the client joined the group); one it claims a position before
        that for, from there too.
        """
        if not conn.is_open:  # replaced or closed meanwhile: there is nothing to bring back
            return False, 0, []
        state, baselines = await self._take_session(conn)
        if conn.state is not State.OPEN:  # (closed, to come back: not taken over)
            return False, 0, []
        streams = {ALL, client_stream(conn.client_id)}
        if conn.user_id is not None:
            streams.add(user_stream(conn.user_id))
        if state is None:  # session expired or lost: nothing can be vouched for
            failed = sorted(positions) or ["*"]
            now = time.monotonic()
            conn.offer(Frame.text(resume_frame(0, failed, fresh=True)), now)
            held = {stream: positions[stream] for stream in streams if stream in positions}
            # the fresh session's promise begins at its baselines, not the lost positions
            self._release(conn, held, now, follow=baselines)
            return False, 0, failed
        self._tell_left(conn, {*channels, *_groups_in(positions)})
        # a group whose namespace keeps no history has nothing to replay: its membership
        # is restored (above), and its messages come live from now on
        streams.update(group_stream(group) for group in state.groups
                       if self._ctx.config.keeps_history(group))
        # (a claim never reaches before the session or the membership began)
        starts = {stream: start for stream in streams
                  if (start := replay_start(positions.get(stream),
                                            state.baselines.get(stream)))}
        replayed, failed = await self._replay(conn, starts)
        return not failed, replayed, failed

    def _tell_left(self, conn: Connection, held: set[str]) -> None:
        """Offer an ``unsubscribed`` frame for each group in `held` that `conn` (a resumed
        session's, its groups restored) is not in: a leave written while no socket of the
        client could be told. One written since the session was loaded reaches `conn` as
        any other (a settle tells it)."""
        if conn.protocol < 2 or not conn.is_open:
            return
        now = time.monotonic()
        for group in sorted(held - conn.groups):
            conn.offer(Frame.text(unsubscribed_frame(group)), now)

    async def _take_session(
        self, conn: Connection,
    ) -> tuple[SessionState | None, dict[str, tuple[int, str]]]:
        """Load the client's session and take it over, its groups joined here; or open a
        fresh one when there is none, or it is not `conn`'s user's (another user's, or
        anonymous and `conn` a user's, or the reverse; one whose user is not known is
        resumed, as before sessions were checked): (None, its baselines). In the
        client's membership turn: a join or leave written meanwhile for the session's
        earlier holder reaches `conn` after this, settled from what the backend lists
        then."""
        ctx = self._ctx
        async with self._membership.turn(conn.client_id):
            try:
                state = await ctx.ask(ctx.backend.sessions.load(conn.client_id))
            except BackendUnavailable:
                state = None
            if state is not None and not state.is_for(conn.user_id):
                # another user on the client id (a shared device) holds its token: the
                # session, the earlier user's groups, data and history, is not theirs
                logger.info("session of %r was another user's: it begins afresh",
                            conn.client_id)
                state = None
            if state is not None:
                try:
                    await self._activate(conn, fresh=False, strict=True)
                except SessionGone:  # a sweep ended it after the load: begin afresh
                    logger.info("session of %r ended while it resumed", conn.client_id)
                except BackendUnavailable:
                    self._come_back_later(conn)
                    return None, {}
                else:
                    await self._restore(conn, state)
                    return state, {}
            baselines = await self._activate(conn, fresh=True)
            if baselines is not None:
                # it ended every earlier membership, one a settle gave `conn` included
                await self._membership.start_afresh(conn)
            return None, baselines or {}

    async def _activate(self, conn: Connection, *, fresh: bool,
                        strict: bool = False) -> dict[str, tuple[int, str]] | None:
        """Open (or revive) the session held by `conn`; return a fresh one's baselines
        (none for a revived one), or None when the backend could not be reached (`strict`:
        BackendUnavailable passes through) or a newer connection of the client holds it
        (this one is replaced: its kick is due). SessionGone (a revived one) passes
        through."""
        ctx = self._ctx
        try:
            return await ctx.ask(ctx.backend.sessions.activate(conn.client_id, fresh=fresh,
                                                               user_id=conn.user_id,
                                                               conn_id=conn.conn_id),
                                 round_trips=SESSION_ROUND_TRIPS)
        except BackendUnavailable as exc:
            self._backend_log.warning("session of %r not opened (backend unavailable)",
                                      conn.client_id, exc=exc)
            if strict:
                raise
            return None
        except SessionTaken:
            logger.info("session of %r not taken over: a newer connection holds it",
                        conn.client_id)
            return None

    def _come_back_later(self, conn: Connection) -> None:
        """The session was loaded but could not be taken over (the backend did not answer
        in time): it would expire under a connected client that was told all was
        recovered. Close the connection with retry advice instead (1013); the client comes
        back with the token its session frame carried, and resumes then."""
        if self._retire is not None:
            self._retire(conn, int(CloseCode.TRY_AGAIN_LATER),
                         retry_advice(self._ctx.config.retry_jitter))

    async def _restore(self, conn: Connection, state: SessionState) -> None:
        for group in state.groups:
            await self._membership.join_local(conn, group)  # (skips a closed connection)
        await self._membership.entries.learn(conn, state.groups)  # what the book gives back if lost
        values = []
        for key, raw in state.user_data.items():
            try:
                values.append((key, msgpack.unpackb(raw)))
            except (ValueError, msgpack.UnpackException):
                logger.warning("user data %r of %r is unreadable; dropped", key, conn.client_id)
        conn.restore_user_data(values)

    async def catch_up(self, conn: Connection, starts: dict[str, tuple[int, str]]) -> None:
        """A fresh session's connection, admitted after its node delivered messages of
        its streams past where the session began (they reached the node while it waited
        for its registration and its session): send it those, then the live frames held
        meanwhile. What the store cannot give back, the client is told of (a ``resume``
        frame naming the stream, as when a node loses part of a stream)."""
        _, failed, held, _ = await self._send_missed(conn, starts)
        now = time.monotonic()
        if failed:
            conn.offer(Frame.text(resume_frame(0, failed)), now)
        conn.release_held(held, now)

    async def _replay(self, conn: Connection,
                      starts: dict[str, tuple[int, str]]) -> tuple[int, list[str]]:
        """Send what `conn` missed on each stream after its start, then the resume frame,
        then the live frames held meanwhile (none at or before the start or the replay)."""
        replayed, failed, held, unknown = await self._send_missed(conn, starts)
        now = time.monotonic()
        conn.offer(Frame.text(resume_frame(replayed, failed)), now)
        # (a stream it was told it lost starts again with its next message; one the store
        # holds nothing of is followed from before its next epoch, whatever the client said)
        self._release(conn, held, now,
                      follow={stream: (0, "") if stream in unknown else at
                              for stream, at in held.items() if stream not in failed})
        return replayed, failed

    async def _send_missed(
        self, conn: Connection, starts: dict[str, tuple[int, str]],
    ) -> tuple[int, list[str], dict[str, tuple[int, str]], set[str]]:
        """Send what `conn` missed on each stream after its start: (how many frames, the
        streams the store could not give back, what the client holds after them, the
        streams the store holds nothing of). A stream it holds nothing of is one it could
        not give back unless it still holds the session `conn` took, read after it."""
        replayed = 0
        failed: list[str] = []
        held = dict(starts)  # what the client holds: its start, then what it is replayed
        unknown: set[str] = set()  # streams the store holds nothing of: epochs unvouched
        for stream in sorted(starts):
            if not conn.is_open:  # (closed meanwhile: the rest would go nowhere)
                break
            sent, whole = await self._send_stream(conn, stream, held)
            replayed += sent
            if whole is None:
                unknown.add(stream)
            elif not whole:
                failed.append(stream)
        if unknown and not await self._holds_session(conn):
            # a stream the store holds nothing of expired (nothing was sent on it for
            # longer than a session lives) only in the store that kept the session: one
            # that lost it since (restarted empty, failed over) lost what it held after
            # the client's position too, which cannot be vouched for
            failed = sorted({*failed, *unknown})
            unknown.clear()
        return replayed, failed, held, unknown

    async def _send_stream(self, conn: Connection, stream: str,
                           held: dict[str, tuple[int, str]]) -> tuple[int, bool | None]:
        """Send what `conn` missed on `stream` after held[stream], a page at a time, each
        page's frames handed over before the next is read (held[stream] follows): (how many
        frames, whether the store gave it all back; None when it holds nothing of it).

        A page is one bounded read with a timeout of its own, so a long history blocks
        the store no longer than a page does, and the node holds one page of it at a time.
        The replay ends at the stream's last offset as the first page found it: what came
        after reaches `conn` live (held until the replay ends). A later page that finds the
        stream trimmed past where the last one ended, or gone, or in another epoch, is a
        stream not given back, never a gap skipped."""
        replayed = 0
        async with aclosing(history_pages(self._ctx, stream, *held[stream])) as pages:
            async for page in pages:
                if page.found.absent:  # (only a first page comes absent)
                    return replayed, None
                if not page.found.covered:
                    return replayed, False
                now = time.monotonic()
                for missed in page.envelopes:
                    assert missed.offset is not None
                    assert missed.epoch is not None
                    held[stream] = (missed.offset, missed.epoch)
                    # (as a live delivery does: a plain client cannot acknowledge, and a
                    # token the connection forgets to take this one's is reported)
                    if missed.exclude != conn.client_id and self._fanout.hand(
                            conn, history_frame(stream, missed), now):
                        replayed += 1
                if not conn.is_open:  # (closed meanwhile: the rest would go nowhere)
                    break
        return replayed, True

    async def _holds_session(self, conn: Connection) -> bool:
        """Whether the store still holds the session `conn` took over or opened (read after
        the streams: it kept everything in between); False when it cannot say."""
        ctx = self._ctx
        try:
            return await ctx.ask(ctx.backend.sessions.held(conn.client_id, conn.conn_id))
        except BackendUnavailable:
            return False

    def _release(self, conn: Connection, held: dict[str, tuple[int, str]], now: float, *,
                 follow: dict[str, tuple[int, str]]) -> None:
        """Let live frames through, in order, none at or before what the client holds; the
        node follows the client's streams from `follow` if it did not (its listener may
        lag: a catch-up then covers what the subscription loses after that)."""
        conn.release_held(held, now)
        if conn.is_open:  # (a closed one's streams are unfollowed already)
            for stream, (offset, epoch) in follow.items():
                self._router.follow(stream, offset, epoch)


def _groups_in(positions: Positions) -> Iterator[str]:
    """The groups whose streams a client holds positions in (it received their messages,
    and the clients forget a group's position when they leave it)."""
    for stream in positions:
        target = Target.of_stream(stream)
        if target is not None and target.kind == "group":
            yield target.name
