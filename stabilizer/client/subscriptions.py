"""The channels a v2 client subscribed to, as it keeps them (docs/protocol.md 6.6): each
one's callbacks, params and presence copy, and the order of its own requests, so that a
subscribe answered after an unsubscribe sent later (or an ``unsubscribed`` frame) counts as
undone. client/requests.py sends the requests; this module only keeps the record.

The record changes as the reader reads each reply (client/calls.py, ``on_reply``), before
the frames behind it: a channel's messages go to its subscription from its subscribe's
reply on, and those of a channel the application leaves go to the subscription it had
until the reply to its unsubscribe (the server sent them before the leave)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from stabilizer.client.callbacks import notify, unawaited
from stabilizer.client.presence import ChannelPresence, OnPresenceChange
from stabilizer.pure.text import JSONValue

logger = logging.getLogger(__name__)

#: Called with each message of a subscribed channel (str or bytes).
OnMessage = Callable[[str | bytes], object]
#: Called with the reason when the server ends a subscription itself: ``"server"`` (an
#: ``unsubscribed`` frame), or the code of the refusal of a subscribe made again after a
#: reconnect (``bad_request`` too when its frame is over the server's max_message_size).
OnUnsubscribed = Callable[[str], object]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """One channel as the subscribe that holds it asked for it (each subscribe makes its
    own: they compare by identity)."""

    on_message: OnMessage | None = None
    params: JSONValue = None
    presence: bool = False  # follows the channel's presence: a presence subscribe succeeded
    on_unsubscribed: OnUnsubscribed | None = None


class Subscriptions:
    """The channels this client subscribed to, with their callbacks and params."""

    def __init__(self) -> None:
        self.active: dict[str, Subscription] = {}
        self.presences: dict[str, ChannelPresence] = {}  # of the active that follow presence
        # The server takes a channel's requests in the order sent, so a subscribe answered
        # after an unsubscribe sent later is undone by it: each request gets a number, and
        # the last unsubscribe's is kept while subscribes of its channel are in flight.
        self._numbers = itertools.count()
        self._subscribing: Counter[str] = Counter()
        self._left: dict[str, int] = {}
        self._ended: dict[str, tuple[int, str]] = {}  # ... when the server sent it: reason
        # the client's own unsubscribes not answered yet, and the on_message of the
        # subscription the application's ended (its channel's messages go there meanwhile)
        self.leaving: Counter[str] = Counter()
        self._leaving_routes: dict[str, OnMessage] = {}

    def subscribing(self, channel: str) -> int:
        """A subscribe of `channel` is about to be sent: its number, for `subscribed`."""
        self._subscribing[channel] += 1
        return next(self._numbers)

    @property
    def follows_presence(self) -> bool:
        """Whether any channel held follows its presence."""
        return any(entry.presence for entry in self.active.values())

    def subscribed(self, channel: str, number: int, entry: Subscription | None,
                   on_presence: OnPresenceChange | None = None) -> None:
        """The subscribe `number` ended: with its `entry` when it succeeded; it counts only
        when no unsubscribe of its channel was sent (nor an ``unsubscribed`` frame
        received) after it. One that follows presence gets the channel's presence copy
        (made now: its state comes right behind the reply), with `on_presence` added; a
        channel that follows it already goes on doing so (the server keeps following)."""
        left_at = self._left.get(channel, -1)
        left = left_at > number
        ended = self._ended.get(channel)
        self._subscribing[channel] -= 1
        if not self._subscribing[channel]:
            del self._subscribing[channel]
            self._left.pop(channel, None)
            self._ended.pop(channel, None)
        if entry is None:
            return
        if left:
            if ended is not None and ended[0] == left_at:
                notify(entry.on_unsubscribed, ended[1])  # the server undid it at once
            return
        held = self.active.get(channel)
        if held is not None and held.presence and not entry.presence:
            entry = dataclasses.replace(entry, presence=True)
        self.active[channel] = entry
        if entry.presence:
            copy = self.presences.setdefault(channel, ChannelPresence(channel))
            if on_presence is not None:
                copy.on_change(on_presence)

    def unsubscribing(self, channel: str, *, until_reply: bool = False) -> None:
        """An unsubscribe of `channel` is about to be sent (or the server ended the
        channel): forget it, even when a subscribe sent before is answered later.
        `until_reply`: the application's own, whose channel's messages go on to the
        subscription it ends until its reply (see `left`)."""
        entry = self.active.get(channel)
        if not until_reply:
            self._leaving_routes.pop(channel, None)
        elif entry is not None and entry.on_message is not None:
            self._leaving_routes[channel] = entry.on_message
        self.forget(channel)
        if channel in self._subscribing:
            self._left[channel] = next(self._numbers)

    def leaves(self, channel: str) -> None:
        """The client's own unsubscribe of `channel` is about to be sent (see `records`)."""
        self.leaving[channel] += 1

    def left(self, channel: str) -> None:
        """The reply to an unsubscribe `leaves` counted was read (or none will come): once
        none is left, a message of the channel is a new membership's."""
        self.leaving[channel] -= 1
        if not self.leaving[channel]:
            del self.leaving[channel]
            self._leaving_routes.pop(channel, None)

    def records(self, channel: str) -> bool:
        """Whether a message of `channel` records its position (a resume counts a channel
        whose position it sends as held): not while the client's own unsubscribe of it is
        on its way (the server sent it before the leave; one after the reply is a new
        membership's, such as the application's join), unless it subscribes again."""
        return (channel not in self.leaving or channel in self.active
                or channel in self._subscribing)

    def forget(self, channel: str) -> None:
        """Drop `channel` (its callbacks and presence copy) from the subscriptions."""
        self.active.pop(channel, None)
        self.presences.pop(channel, None)

    def ended(self, frame: Mapping[str, Any]) -> None:
        """An ``unsubscribed`` frame: the server ended the subscription of its channel. It
        counts as an unsubscribe sent now (a subscribe in flight is undone: the server
        takes the client out only of a channel it was in, so the frame follows a join)."""
        channel, reason = frame.get("channel"), frame.get("reason")
        if not isinstance(channel, str):
            return
        reason = reason if isinstance(reason, str) else "server"
        entry = self.active.get(channel)
        self.unsubscribing(channel)
        if channel in self._subscribing:  # (its subscribe tells its own callback)
            self._ended[channel] = (self._left[channel], reason)
        notify(entry.on_unsubscribed if entry is not None else None, reason)

    async def presence_frame(self, frame: Mapping[str, Any]) -> None:
        """Hand a ``presence_state`` or ``presence_diff`` frame to its channel's copy."""
        channel = frame.get("channel")
        presence = self.presences.get(channel) if isinstance(channel, str) else None
        if presence is not None:
            await presence.apply(frame)

    def route(self, channel: str | None, message: str | bytes) -> bool:
        """Hand a channel's message to its callback (that of the subscription the
        application is leaving, until the reply); False when it goes to the inbox."""
        if channel is None:
            return False
        entry = self.active.get(channel)
        callback = (entry.on_message if entry is not None
                    else self._leaving_routes.get(channel))
        if callback is None:
            return False
        try:
            unawaited(callback(message), f"on_message of channel {channel!r}")
        except Exception:  # the application's bug must not end the connection
            logger.error("on_message of channel %r failed", channel, exc_info=True)
        return True
