"""Presence diffs for the local connections that follow a group's presence (a v2
``subscribe`` with ``presence: true``).

Every change of a group's presence reaches each node following the group as a PRESENCE
envelope, in the backend's order, with a growing version. A watcher starts *pending*: it
collects the changes that arrive while its subscribe reads the group's state (with the
version that state stands at). Once ready, it gets the state, then what it collected past
that version, then, one frame per window (``presence_diff_window``), every later change
past what it has seen: each change exactly once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import presence_diff_frame, presence_state_frame
from stabilizer.pure.presence import Change, coalesce, parse_change, parse_entry, presence_of
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Watcher:
    seen: int | None = None  # the last version it got (None: pending)
    backlog: list[Change] = field(default_factory=list)  # collected while pending


@dataclass(slots=True)
class _Group:
    watchers: dict[Connection, _Watcher] = field(default_factory=dict)
    window: list[Change] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class PresenceWatch:
    """The local connections following each group's presence, and their diffs."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._groups: dict[str, _Group] = {}
        self._wire_log = RateLimitedLog(logger)

    def begin(self, conn: Connection, group: str) -> None:
        """Start collecting `group`'s changes for `conn` (before reading the state)."""
        self._groups.setdefault(group, _Group()).watchers[conn] = _Watcher()

    def abort(self, conn: Connection, group: str) -> None:
        """`conn` does not follow `group`'s presence (any more)."""
        state = self._groups.get(group)
        if state is not None:
            state.watchers.pop(conn, None)
            self._drop_if_idle(group, state)

    def ready(self, conn: Connection, group: str, version: int,
              entries: Mapping[str, str]) -> list[str]:
        """The state read at `version`: return the frames `conn` gets now, in order (the
        state, and a diff of what arrived past it meanwhile); later changes follow in
        diffs. Call it right before offering them: nothing may run in between."""
        state = self._groups.get(group)
        watcher = None if state is None else state.watchers.get(conn)
        presence = presence_of(entry for raw in entries.values()
                               if (entry := parse_entry(raw)) is not None)
        frames = [presence_state_frame(group, presence)]
        if watcher is None:  # (aborted meanwhile)
            return frames
        newer = [change for change in watcher.backlog if change.version > version]
        watcher.backlog = []
        watcher.seen = max([version, *(change.version for change in newer)])
        if newer and (diff := coalesce(newer)) is not None:
            frames.append(presence_diff_frame(group, diff))
        return frames

    def receive(self, envelope: Envelope) -> None:
        """A PRESENCE envelope from the group's channel."""
        group = envelope.target
        state = self._groups.get(group) if group is not None else None
        if state is None or group is None:
            return
        change = parse_change(envelope.payload, envelope.ref)
        if change is None:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped a malformed presence change of %r", group)
            return
        for watcher in state.watchers.values():
            if watcher.seen is None:
                watcher.backlog.append(change)
        state.window.append(change)
        if state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self._ctx.config.presence_diff_window,
                                          self._flush, group)

    def unfollow(self, stream: str) -> None:
        """No local connection follows `stream` any more: for a group's, forget its
        watchers."""
        target = Target.of_stream(stream)
        if target is not None and target.kind == "group":
            state = self._groups.pop(target.name, None)
            if state is not None and state.timer is not None:
                state.timer.cancel()

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
