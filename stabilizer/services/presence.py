"""Presence diffs for the local connections that follow a group's presence (a v2
``subscribe`` with ``presence: true``).

Every change of a group's presence reaches each node following the group in a PRESENCE
envelope (one change, or a batch one backend step made), in the backend's order, with a
growing version. A watcher starts *pending*: it
collects the changes that arrive while its subscribe reads the group's state (with the
version that state stands at). Once ready, it gets the state, then what it collected past
that version, then, one frame per window (``presence_diff_window``), every later change
past what it has seen: each change exactly once, in order. When the node's subscription is
lost (changes may be lost with it), every watcher starts over: the state again, once the
subscription is back, then the changes past it. A watcher ends when its connection leaves
the group, or when the node stops following the group (its last local member left), but
for one whose subscribe still waits to join (``joining``): a leave or an unfollow ordered
before that join does not end it; the join makes it a member (following the group again),
and it reads the state after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import presence_diff_frame, presence_state_frame
from stabilizer.pure.presence import Change, coalesce, parse_changes, parse_entry, presence_of
from stabilizer.pure.streams import Target
from stabilizer.pure.text import backoff_delay
from stabilizer.pure.wire import Envelope

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Watcher:
    seen: int | None = None  # the last version it got (None: pending)
    joining: bool = True  # its subscribe's join has not landed yet (see joined())
    backlog: list[Change] = field(default_factory=list)  # collected while pending


@dataclass(slots=True)
class _Group:
    watchers: dict[Connection, _Watcher] = field(default_factory=dict)
    window: list[Change] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    # the last state read (its version and entries) and its frame: every watcher that got
    # that read shares the frame
    read: tuple[int, Mapping[str, str]] | None = None
    state_frame: str = ""


State = tuple[int, Mapping[str, str]]


@dataclass(slots=True)
class _Reads:
    """One group's state reads: whether one is being made, and the one that starts when it
    ends (shared by everyone who asked meanwhile)."""

    running: bool = False
    reading: asyncio.Future[State | Exception] | None = None  # the read being made
    next: asyncio.Future[State | Exception] | None = None


class PresenceWatch:
    """The local connections following each group's presence, and their diffs."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._groups: dict[str, _Group] = {}
        self._followed: dict[Connection, set[str]] = {}  # the groups each one follows
        self._wire_log = RateLimitedLog(logger)
        self._backend_log = RateLimitedLog(logger)
        self._stale: list[str] = []  # groups whose state watchers get again
        self._resync: asyncio.Task[None] | None = None
        self._reads: dict[str, _Reads] = {}

    async def read_state(self, group: str) -> State:
        """The group's presence state (version, entries) for a watcher that began: the
        subscribes of one group that meet in time share one backend read. A read asked
        while another is being made waits for the next one, which starts after it was
        asked: a state read before a watcher began could stand before changes it never
        collected. Share the entries: read only.

        Raises:
            BackendUnavailable: the read failed or did not answer within op_timeout.
        """
        reads = self._reads.get(group)
        if reads is None:
            reads = self._reads[group] = _Reads()
        slot = reads.next
        if slot is None:
            slot = reads.next = asyncio.get_running_loop().create_future()
            if not reads.running:
                reads.running = True
                task = self._ctx.tasks.spawn(self._read_for(reads, group),
                                             name="stabilizer-presence-read")
                task.add_done_callback(lambda _: self._reads_ended(group, reads))
        outcome = await asyncio.shield(slot)  # (a waiter cancelled leaves it to the others)
        if isinstance(outcome, Exception):
            raise BackendUnavailable(f"presence of {group!r} not read: {outcome}") \
                from outcome
        return outcome

    async def _read_for(self, reads: _Reads, group: str) -> None:
        """Make the group's reads one after the other while someone waits for one."""
        ctx = self._ctx
        while (slot := reads.next) is not None:
            reads.next = None
            reads.reading = slot
            outcome: State | Exception
            try:
                outcome = await ctx.ask(ctx.backend.groups.presence_state(group))
            except Exception as exc:  # (each waiter raises its own BackendUnavailable)
                outcome = exc
            slot.set_result(outcome)
        # nobody waits (no await since the check): the next read_state starts afresh
        reads.running, reads.reading = False, None
        if self._reads.get(group) is reads:
            del self._reads[group]

    def _reads_ended(self, group: str, reads: _Reads) -> None:
        """A reading task that did not end by itself (cancelled: the node is stopping,
        perhaps before the task even began) tells whoever waits."""
        if not reads.running:
            return  # it ended by itself
        for waiting in (reads.reading, reads.next):
            if waiting is not None and not waiting.done():
                waiting.set_result(BackendUnavailable("the node is stopping"))
        reads.running, reads.reading, reads.next = False, None, None
        if self._reads.get(group) is reads:
            del self._reads[group]

    def begin(self, conn: Connection, group: str) -> _Watcher | None:
        """Start collecting `group`'s changes for `conn` (before reading the state); return
        the watcher this replaces when `conn` followed the presence already (a repeated
        subscribe), for abort() to put back if this attempt fails."""
        watchers = self._groups.setdefault(group, _Group()).watchers
        previous = watchers.get(conn)
        watchers[conn] = _Watcher()
        self._followed.setdefault(conn, set()).add(group)
        return previous if previous is not None and previous.seen is not None else None

    def joined(self, conn: Connection, group: str) -> None:
        """The join of `conn`'s presence subscribe landed (in the client's turn): from now
        on a leave of `conn` from `group` ends its watcher."""
        state = self._groups.get(group)
        watcher = None if state is None else state.watchers.get(conn)
        if watcher is not None:
            watcher.joining = False

    def left(self, conn: Connection, group: str) -> None:
        """`conn` left `group` (however it left): it follows its presence no more, unless
        its subscribe still waits to join (the leave was ordered before that join, which
        makes it a member again)."""
        state = self._groups.get(group)
        watcher = None if state is None else state.watchers.get(conn)
        if watcher is None or not watcher.joining or not conn.is_open:
            self.abort(conn, group)

    def abort(self, conn: Connection, group: str, kept: _Watcher | None = None) -> None:
        """`conn` does not follow `group`'s presence (any more); or, with `kept` (what
        begin() returned), a repeated subscribe failed and the presence it followed
        before is followed on: what changed meanwhile goes out as one diff."""
        state = self._groups.get(group)
        attempt = None if state is None else state.watchers.get(conn)
        if (kept is not None and kept.seen is not None and state is not None
                and attempt is not None):
            newer = [change for change in attempt.backlog if change.version > kept.seen]
            state.watchers[conn] = kept
            if newer:
                kept.seen = max(change.version for change in newer)
                if (diff := coalesce(newer)) is not None:
                    conn.offer(Frame.text(presence_diff_frame(group, diff)), time.monotonic())
            return
        self._unlist(conn, group)
        if state is not None:
            state.watchers.pop(conn, None)
            self._drop_if_idle(group, state)

    def _unlist(self, conn: Connection, group: str) -> None:
        followed = self._followed.get(conn)
        if followed is not None:
            followed.discard(group)
            if not followed:
                del self._followed[conn]

    def ready(self, conn: Connection, group: str, version: int,
              entries: Mapping[str, str]) -> list[str]:
        """The state read at `version`: return the frames `conn` gets now, in order (the
        state, and a diff of what arrived past it meanwhile); later changes follow in
        diffs. Call it right before offering them: nothing may run in between."""
        state = self._groups.get(group)
        watcher = None if state is None else state.watchers.get(conn)
        frames = [self._state_frame(group, state, version, entries)]
        if watcher is None:  # (aborted meanwhile)
            return frames
        if watcher.seen is not None:  # a resync gave it a newer state meanwhile
            return []
        if group in self._stale:  # read before a lost subscription: a newer state follows
            return frames
        newer = [change for change in watcher.backlog if change.version > version]
        watcher.backlog = []
        watcher.seen = max([version, *(change.version for change in newer)])
        if newer and (diff := coalesce(newer)) is not None:
            frames.append(presence_diff_frame(group, diff))
        return frames

    @staticmethod
    def _state_frame(group: str, state: _Group | None, version: int,
                     entries: Mapping[str, str]) -> str:
        """The presence_state frame of a read, made once for every watcher that got it."""
        read = None if state is None else state.read
        if state is not None and read is not None and read[1] is entries and read[0] == version:
            return state.state_frame
        presence = presence_of(entry for raw in entries.values()
                               if (entry := parse_entry(raw)) is not None)
        frame = presence_state_frame(group, presence)
        if state is not None:
            state.read, state.state_frame = (version, entries), frame
        return frame

    def resubscribing(self) -> None:
        """The listener lost its subscription (changes may be lost with it) and subscribes
        again: every watcher starts over, pending, and gets the state again (read once the
        subscription is confirmed), then the changes past it."""
        for group, state in self._groups.items():
            for watcher in state.watchers.values():
                watcher.seen, watcher.backlog = None, []
            if state.watchers and group not in self._stale:
                self._stale.append(group)
        if self._stale and (self._resync is None or self._resync.done()):
            self._resync = self._ctx.tasks.spawn(self._resync_when_subscribed(),
                                                 name="stabilizer-presence-resync")

    async def _resync_when_subscribed(self) -> None:
        ctx = self._ctx
        failures = 0
        while self._stale:
            await ctx.backend.routing.subscribed.wait()
            group = self._stale[0]
            try:
                version, entries = await ctx.ask(ctx.backend.groups.presence_state(group))
            except BackendUnavailable as exc:
                failures += 1
                self._backend_log.warning("presence of %r not read again yet", group, exc=exc)
                await asyncio.sleep(backoff_delay(failures))
                continue
            failures = 0
            if not self._stale or self._stale[0] != group:
                continue  # unfollowed meanwhile: its watchers read the state their joins bring
            self._stale.pop(0)
            state = self._groups.get(group)
            now = time.monotonic()
            for conn, watcher in list(state.watchers.items()) if state else ():
                if watcher.seen is None:
                    for frame in self.ready(conn, group, version, entries):
                        conn.offer(Frame.text(frame), now)

    def receive(self, envelope: Envelope) -> list[Change] | None:
        """A PRESENCE envelope from the group's channel: return its changes (parsed once
        for the node: the membership's book reads them too); None if malformed."""
        group = envelope.target
        changes = (parse_changes(envelope.payload, envelope.ref) if group is not None
                   else None)
        if changes is None or group is None:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped a malformed presence change of %r", group)
            return None
        state = self._groups.get(group)
        if state is None:
            return changes
        for watcher in state.watchers.values():
            if watcher.seen is None:
                watcher.backlog.extend(changes)
        state.window.extend(changes)  # a batch: all in this window, so in one diff
        if state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self._ctx.config.presence_diff_window,
                                          self._flush, group)
        return changes

    def forget(self, conn: Connection) -> None:
        """`conn` closed: it follows no presence any more."""
        for group in list(self._followed.get(conn, ())):
            self.abort(conn, group)

    def unfollow(self, stream: str) -> None:
        """No local member is left in `stream`'s group: the node's subscription to the
        group's channel ends (and its changes with it). A watcher of a subscribe still
        waiting to join stays (its join subscribes again, and it reads the state after):
        it starts over, pending, collecting from the new subscription. Any other watcher
        is forgotten (pending ones too: one left pending by resubscribing() would never be
        made ready again, and collect changes for ever once the group is followed again)."""
        target = Target.of_stream(stream)
        if target is None or target.kind != "group":
            return
        group = target.name
        state = self._groups.get(group)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        state.window, state.timer, state.read = [], None, None
        for conn, watcher in list(state.watchers.items()):
            if watcher.joining and conn.is_open:  # (a resync may have made it ready)
                watcher.seen, watcher.backlog = None, []  # its state is read anew
            else:
                del state.watchers[conn]
                self._unlist(conn, group)
        if group in self._stale:  # (the waiting ones' reads come after their joins)
            self._stale.remove(group)
        self._drop_if_idle(group, state)

    def _flush(self, group: str) -> None:
        state = self._groups.get(group)
        if state is None:
            return
        window, state.window, state.timer = state.window, [], None
        frames: dict[int, str | None] = {}  # diffs by the index of their first change
        now = time.monotonic()
        for conn, watcher in list(state.watchers.items()):
            if not conn.is_open:
                del state.watchers[conn]
                self._unlist(conn, group)
                continue
            if watcher.seen is None:
                continue
            seen = watcher.seen
            start = next((i for i, change in enumerate(window) if change.version > seen),
                         len(window))
            if start == len(window):
                continue
            if start not in frames:
                diff = coalesce(window[start:])
                frames[start] = None if diff is None else presence_diff_frame(group, diff)
            watcher.seen = window[-1].version
            frame = frames[start]
            if frame is not None:
                conn.offer(Frame.text(frame), now)
        self._drop_if_idle(group, state)

    def _drop_if_idle(self, group: str, state: _Group) -> None:
        if not state.watchers and state.timer is None:
            self._groups.pop(group, None)
