"""Frames a connection takes but does not send yet: the outbox in waiting.

Two things make a connection wait. A resuming client's replay: live frames wait until its
history is sent, so that none arrives twice or out of order (``release_held``). And a v2
subscribe in flight: the connection is a member of the channel from its local join, before
the backend has the membership, so that nothing sent between the two is lost; the
channel's frames wait until the reply is sent, then follow it, or are dropped when the
connection is not in the channel after all (``release_channel``).

Held frames count against the outbox's bounds. A replay's fail the connection (1013) when
they overflow, as the outbox does. A subscribe's do not: the join is what keeps them
waiting (the backend's write, up to several round trips), not a client that reads slowly,
so a busy channel would close healthy clients, again at every subscribe they retry. Past
the bounds the channel's held frames are dropped instead, and after the reply a member is
told what it missed, as a node tells the clients of a stream whose gap it cannot fill:
with the channel's history, by a ``resume`` frame (recovered false, the channel's ``g:``
stream in ``failed``), on which the client resyncs its state from the application's own
source of truth (docs/protocol.md, sections 2 and 6.6). Without history there is no
stream to name and no notice: live messages are delivered at most once, and the frames
held after the drop follow the reply as any do. Only the outbox itself, frames waiting on
the socket, fails the connection.

A fan-out tests one attribute per recipient for the second kind: it is None unless a
subscribe is in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from stabilizer.connection.sockets import Frame
from stabilizer.connection.writer import SocketWriter, State
from stabilizer.pure.streams import ClientPositions

logger = logging.getLogger(__name__)

#: A frame waiting out a replay, with the (stream, offset, epoch) it carries, if sequenced.
Held = tuple[str | None, int | None, str | None, Frame]


class HoldingWriter(SocketWriter):
    """The frames a Connection holds back, and the positions its client holds."""

    __slots__ = ("_held", "_joining", "_overflowed", "_positions")

    _held: list[Held] | None  # a replay's: None when no replay is under way
    _joining: dict[str, list[Held]] | None  # by channel whose subscribe is in flight
    _overflowed: set[str] | None  # of those, the channels whose held frames were dropped
    _positions: ClientPositions | None

    @property
    def holding(self) -> bool:
        """True while its live frames wait for a replay to end (release_held)."""
        return self._held is not None

    def deliver(self, frame: Frame, now: float, stream: str | None = None,
                offset: int | None = None, epoch: str | None = None) -> bool:
        """Like offer(), but a frame arriving during a resume replay, or one of a channel
        whose subscribe is in flight, waits its turn, and a sequenced frame at or before
        the position the client holds on its stream (same epoch) is not sent: the client
        has it (True is returned, as for a frame sent)."""
        held = self._held
        if held is not None and self._state is State.OPEN:
            return self._hold(held, (stream, offset, epoch, frame))
        joining = self._joining
        if joining is not None and self._state is State.OPEN:
            channel = frame.channel
            if channel is not None and channel in joining:
                return self._hold_joining(channel, (stream, offset, epoch, frame))
        if (stream is not None and offset is not None and epoch is not None
                and not self._held_positions().admit(stream, offset, epoch)):
            return True
        return self.offer(frame, now)

    def _hold(self, held: list[Held], frame: Held) -> bool:
        """Keep a frame back: held frames are the outbox in waiting, within its bounds."""
        if not self._room_for(frame[3], self._waiting()):
            return False
        held.append(frame)
        self._queued_bytes += frame[3].size
        return True

    def _hold_joining(self, channel: str, frame: Held) -> bool:
        """Keep back a frame of a channel whose subscribe is in flight; past the bounds,
        drop what the channel held instead of failing the connection (the hold overflowed:
        see release_channel), then this frame too if the rest still leaves no room."""
        joining = self._joining
        assert joining is not None
        held = joining[channel]
        if self._over_bounds(frame[3], self._waiting()) is not None:
            if self._overflowed is None:
                self._overflowed = set()
            if channel not in self._overflowed:
                self._overflowed.add(channel)
                logger.warning("connection %s: channel %r sent more than its outbox holds "
                               "while its subscribe ran; dropped them", self.conn_id, channel)
            self._queued_bytes -= sum(dropped[3].size for dropped in held)
            held.clear()
            if self._over_bounds(frame[3], self._waiting()) is not None:
                return False  # (what waits is the outbox's and other holds': not dropped)
        held.append(frame)
        self._queued_bytes += frame[3].size
        return True

    def _waiting(self) -> int:
        """How many frames wait: in the outbox, and held back."""
        waiting = len(self.outbox) + len(self._held or ())
        for channel_held in (self._joining or {}).values():
            waiting += len(channel_held)
        return waiting

    def _held_positions(self) -> ClientPositions:
        if self._positions is None:
            self._positions = ClientPositions()
        return self._positions

    def release_held(self, positions: Mapping[str, tuple[int, str]], now: float) -> None:
        """End a replay: the client now holds `positions`, (offset, epoch) per stream (its
        own, advanced by the replay); deliver the live frames held meanwhile, in order,
        skipping those at or before them."""
        held, self._held = self._held or [], None
        for name, (last, since) in positions.items():
            self._held_positions().admit(name, last, since)
        for stream, offset, epoch, frame in held:
            self._queued_bytes -= frame.size  # (counted again if it is queued)
            self.deliver(frame, now, stream, offset, epoch)

    def hold_channel(self, channel: str) -> None:
        """A subscribe of `channel` is in flight: its frames wait (see release_channel)."""
        if self._state is not State.OPEN:
            return
        if self._joining is None:
            self._joining = {}
        self._joining.setdefault(channel, [])

    def release_channel(self, channel: str, now: float, *, member: bool,
                        lost: Frame | None = None) -> None:
        """The subscribe of `channel` was answered (its reply is in the outbox): the frames
        held meanwhile follow it, in order, when the connection is a `member` of the
        channel; else they are dropped (it was told it is not subscribed). When the hold
        overflowed (some were dropped), a member is sent `lost` first, the notice that
        says so (None: there is none to send)."""
        joining = self._joining
        held = joining.pop(channel, None) if joining is not None else None
        if joining is not None and not joining:
            self._joining = None
        overflowed = self._overflowed
        dropped = overflowed is not None and channel in overflowed
        if overflowed is not None and dropped:
            overflowed.discard(channel)
            if not overflowed:
                self._overflowed = None
        for _, _, _, frame in held or ():
            self._queued_bytes -= frame.size  # (counted again if it is delivered)
        if not member:
            return
        if dropped and lost is not None:
            self.deliver(lost, now)
        for stream, offset, epoch, frame in held or ():
            self.deliver(frame, now, stream, offset, epoch)

    def _drop_held(self) -> None:
        """The connection takes no more frames: forget those it held (their bytes too)."""
        self._held = None
        self._joining = None
        self._overflowed = None
