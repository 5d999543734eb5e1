"""What a v2 client asks of the server and gets a ``reply`` to: remote procedure calls
and its own channel subscriptions and publications (docs/protocol.md 6.5 and 6.6).

A subscription with an ``on_message`` callback takes its channel's messages out of the
inbox: they go to the callback instead. Subscriptions are the server's group memberships,
so a session resumed with history keeps them (those that follow presence are subscribed
again, once its resume frame came: the server follows presence per connection); after any
other reconnect (no history, or a fresh session) the client subscribes again to each. The
server's hook decides again: a refusal ends that subscription, with a warning in the log
(into a session that kept the membership the client leaves the channel first: a refusal
changes no membership on the server), and its ``on_unsubscribed`` is told. When the server
ends one itself (an ``unsubscribed`` frame: the application took the client out of the
channel, live or while the client was away), the client forgets it too, and its
``on_unsubscribed`` callback is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from websockets.asyncio.client import ClientConnection as WebSocket

from stabilizer.client.callbacks import notify
from stabilizer.client.calls import PendingCalls
from stabilizer.client.presence import ChannelPresence, OnPresenceChange
from stabilizer.client.v2 import ProtocolV2
from stabilizer.errors import RPCError
from stabilizer.pure.client_protocol import ClientClosedError
from stabilizer.pure.client_v2 import channel_frame, rpc_frame
from stabilizer.pure.streams import group_stream
from stabilizer.pure.text import JSONValue
from stabilizer.pure.waits import wait_seconds

if TYPE_CHECKING:  # (frames.py imports this module)
    from stabilizer.client.frames import Frames

logger = logging.getLogger(__name__)

#: Called with each message of a subscribed channel (str or bytes).
OnMessage = Callable[[str | bytes], object]
#: Called with the reason when the server ends a subscription itself: ``"server"`` (an
#: ``unsubscribed`` frame), or the code of the refusal of a subscribe made again after a
#: reconnect.
OnUnsubscribed = Callable[[str], object]


class Subscriptions:
    """The channels this client subscribed to, with their callbacks and params."""

    def __init__(self) -> None:
        self.active: dict[str, tuple[OnMessage | None, JSONValue]] = {}
        self.presences: dict[str, ChannelPresence] = {}  # subscribed with presence
        self.on_unsubscribed: dict[str, OnUnsubscribed] = {}  # of active channels
        # The server takes a channel's requests in the order sent, so a subscribe answered
        # after an unsubscribe sent later is undone by it: each request gets a number, and
        # the last unsubscribe's is kept while subscribes of its channel are in flight.
        self._numbers = itertools.count()
        self._subscribing: Counter[str] = Counter()
        self._left: dict[str, int] = {}
        self._ended: dict[str, tuple[int, str]] = {}  # ... when the server sent it: reason
        self.leaving: Counter[str] = Counter()  # the client's own unsubscribes on their way

    def subscribing(self, channel: str) -> int:
        """A subscribe of `channel` is about to be sent: its number, for `subscribed`."""
        self._subscribing[channel] += 1
        return next(self._numbers)

    def subscribed(self, channel: str, number: int, entry: tuple[OnMessage | None, JSONValue]
                   | None, on_unsubscribed: OnUnsubscribed | None = None) -> None:
        """The subscribe `number` ended: with `entry` (callback, params) when it succeeded;
        it counts only when no unsubscribe of its channel was sent (nor an ``unsubscribed``
        frame received) after it."""
        left_at = self._left.get(channel, -1)
        left = left_at > number
        ended = self._ended.get(channel)
        self._subscribing[channel] -= 1
        if not self._subscribing[channel]:
            del self._subscribing[channel]
            self._left.pop(channel, None)
            self._ended.pop(channel, None)
        if entry is not None and left and ended is not None and ended[0] == left_at:
            notify(on_unsubscribed, ended[1])  # the server undid it at once
        if entry is not None and not left:
            self.active[channel] = entry
            if on_unsubscribed is not None:
                self.on_unsubscribed[channel] = on_unsubscribed
            else:
                self.on_unsubscribed.pop(channel, None)
        elif channel not in self.active and channel not in self._subscribing:
            self.presences.pop(channel, None)  # (the copy its subscribe made)

    def unsubscribing(self, channel: str) -> None:
        """An unsubscribe of `channel` is about to be sent: forget it, even when a
        subscribe sent before is answered later."""
        self.forget(channel)
        if channel in self._subscribing:
            self._left[channel] = next(self._numbers)

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
        self.on_unsubscribed.pop(channel, None)

    def ended(self, frame: Mapping[str, Any]) -> None:
        """An ``unsubscribed`` frame: the server ended the subscription of its channel. It
        counts as an unsubscribe sent now (a subscribe in flight is undone: the server
        takes the client out only of a channel it was in, so the frame follows a join)."""
        channel, reason = frame.get("channel"), frame.get("reason")
        if not isinstance(channel, str):
            return
        reason = reason if isinstance(reason, str) else "server"
        callback = self.on_unsubscribed.get(channel) if channel in self.active else None
        self.unsubscribing(channel)
        if channel in self._subscribing:  # (its subscribe tells its own callback)
            self._ended[channel] = (self._left[channel], reason)
        notify(callback, reason)

    async def presence_frame(self, frame: Mapping[str, Any]) -> None:
        """Hand a ``presence_state`` or ``presence_diff`` frame to its channel's copy."""
        channel = frame.get("channel")
        presence = self.presences.get(channel) if isinstance(channel, str) else None
        if presence is not None:
            await presence.apply(frame)

    def route(self, channel: str | None, message: str | bytes) -> bool:
        """Hand a channel's message to its callback; False when it goes to the inbox."""
        entry = self.active.get(channel) if channel is not None else None
        if entry is None or entry[0] is None:
            return False
        try:
            entry[0](message)
        except Exception:  # the application's bug must not end the connection
            logger.error("on_message of channel %r failed", channel, exc_info=True)
        return True


class Requests:
    """rpc, subscribe, unsubscribe and publish for ClientConnection (protocol v2)."""

    _calls: PendingCalls
    _subscriptions: Subscriptions
    _v2: ProtocolV2 | None
    _runner: asyncio.Task[None] | None
    _error: ClientClosedError | None
    _wait_open: Callable[[WebSocket | None], Awaitable[WebSocket]]
    _frames: Frames

    async def rpc(self, method: str, params: JSONValue = None, *,
                  timeout: float = 30.0) -> JSONValue:
        """Call the server's procedure `method` with `params` (any JSON value) and return
        its result; waits while reconnecting (docs/protocol.md 6.5).

        Raises:
            RPCError: the server's error (``code``, ``message``, ``data``), or ``timeout``
                (no reply within `timeout` seconds) or ``disconnected`` (the socket closed
                before the reply): in both the call may have run; it is never sent twice.
            ValueError, TypeError: a method name the server refuses, or params not JSON.
            ClientClosedError: closed for good before the call was sent.
        """
        timeout = self._ready("rpc", timeout)
        return await self._calls.call(self._wait_open,
                                      lambda ident: rpc_frame(ident, method, params), timeout)

    async def subscribe(self, channel: str, on_message: OnMessage | None = None, *,
                        params: JSONValue = None, presence: bool = False,
                        on_presence: OnPresenceChange | None = None,
                        on_unsubscribed: OnUnsubscribed | None = None,
                        timeout: float = 30.0) -> None:
        """Join `channel` (a group) if the server's ``on_subscribe`` hook allows it;
        `on_message` then gets the channel's messages (else they arrive as any other).
        With `presence`, ``presence(channel)`` then follows who is in the channel, and
        `on_presence(joins, leaves)` is called for every change from the first state on
        (the state may arrive before this returns: a callback added after can miss it).
        When the server ends the subscription itself (the application took the client out
        of the channel, live or while it was away; or the hook refuses the subscribe made
        again after a reconnect), the client forgets it and calls `on_unsubscribed(reason)`.

        Raises:
            RPCError: refused (``forbidden`` or the hook's own code), ``unavailable``,
                ``timeout`` or ``disconnected`` (as for rpc).
            ValueError, TypeError: a channel name the server refuses, or params not JSON.
        """
        if on_presence is not None and not presence:
            raise ValueError("on_presence needs presence=True")
        timeout = self._ready("subscribe", timeout)
        subscriptions = self._subscriptions
        if presence:  # before the reply: the state follows it at once
            copy = subscriptions.presences.setdefault(channel, ChannelPresence(channel))
            if on_presence is not None:
                copy.on_change(on_presence)
        number = subscriptions.subscribing(channel)
        try:
            await self._calls.call(
                self._wait_open, lambda ident: channel_frame(
                    "subscribe", ident, channel, params, presence=presence), timeout)
        except BaseException:
            subscriptions.subscribed(channel, number, None)
            raise
        subscriptions.subscribed(channel, number, (on_message, params), on_unsubscribed)

    def presence(self, channel: str) -> ChannelPresence:
        """The presence of `channel`, which this client subscribed to with presence=True.

        Raises:
            KeyError: it did not.
        """
        try:
            return self._subscriptions.presences[channel]
        except KeyError:
            raise KeyError(f"not subscribed to {channel!r} with presence=True") from None

    async def unsubscribe(self, channel: str, *, timeout: float = 30.0) -> None:
        """Leave `channel`; its messages stop (any already on their way still arrive).

        Raises:
            RPCError: ``unavailable``, ``timeout`` or ``disconnected``.
        """
        timeout = self._ready("unsubscribe", timeout)
        self._subscriptions.unsubscribing(channel)
        await self._leave(channel, timeout)

    async def _leave(self, channel: str, timeout: float) -> None:
        """Send an unsubscribe of `channel` and forget its position (a resume carries no
        stream the client left): a message of it that arrives meanwhile records none (see
        Subscriptions.records). When the unsubscribe fails and the channel is still
        subscribed (an automatic leave keeps it), its position is restored: the next
        resume replays only what came after it.

        Raises:
            RPCError: ``unavailable``, ``timeout`` or ``disconnected``.
        """
        leaving = self._subscriptions.leaving
        leaving[channel] += 1
        positions, stream = self._frames.positions, group_stream(channel)
        last = positions.get(stream)
        positions.forget(stream)
        try:
            await self._calls.call(self._wait_open,
                                   functools.partial(_unsubscribe_frame, channel), timeout)
        except BaseException:
            if channel in self._subscriptions.active:
                positions.restore(stream, last)
            raise
        finally:
            leaving[channel] -= 1
            if not leaving[channel]:
                del leaving[channel]

    async def publish(self, channel: str, data: str | dict[str, Any] | list[Any], *,
                      timeout: float = 30.0) -> None:
        """Send `data` to every member of `channel` if the server's ``on_publish`` hook
        allows it (it may rewrite it); return once the server sent it.

        Raises:
            RPCError: refused (``forbidden`` or the hook's own code), ``unavailable``
                (not sent to other replicas), ``timeout`` or ``disconnected``.
            ValueError, TypeError: a bad channel name, or data that is not a str, dict or
                list of JSON.
        """
        timeout = self._ready("publish", timeout)
        await self._calls.call(
            self._wait_open, lambda ident: channel_frame("publish", ident, channel, data),
            timeout)

    async def _subscribe_again(self, timeout: float, *, presence_only: bool = False) -> None:
        """After a reconnect that kept no memberships: subscribe to every channel again;
        after one that kept them, to those that follow presence (the server follows it
        per connection), which sends their state again. A refusal ends the subscription
        and its `on_unsubscribed` gets the refusal's code; into a kept session the client
        first leaves the channel (a refusal changes no membership on the server), its
        messages going to the subscription meanwhile. When that unsubscribe fails, the
        subscription stays: the next reconnect asks again."""
        active = self._subscriptions.active
        for channel, entry in list(active.items()):
            presence = channel in self._subscriptions.presences
            if (presence_only and not presence) or active.get(channel) != entry:
                continue  # (unsubscribed, or subscribed anew, while the loop went on)
            try:
                refusal = await self._ask_again(channel, entry[1], presence, timeout)
                if refusal is not None and presence_only and active.get(channel) == entry:
                    await self._leave(channel, timeout)  # the session kept the membership
            except RPCError as exc:
                logger.warning("channel %r was refused, but not left: %s", channel, exc)
                continue
            except ClientClosedError:
                return
            if refusal is not None and active.get(channel) == entry:
                told = self._subscriptions.on_unsubscribed.get(channel)
                self._subscriptions.forget(channel)
                self._frames.positions.forget(group_stream(channel))
                notify(told, refusal)

    async def _ask_again(self, channel: str, params: JSONValue, presence: bool,
                         timeout: float) -> str | None:
        """Subscribe to `channel` again: the refusal's code, or None (allowed, or nothing
        changed: _KEPT_ON).

        Raises:
            ClientClosedError: closed for good.
        """
        try:
            await self._calls.call(
                self._wait_open,
                functools.partial(_subscribe_frame, channel, params, presence), timeout)
        except RPCError as exc:
            if exc.code in _KEPT_ON:
                return None  # nothing changed: the next fresh session tries again
            logger.warning("channel %r was not subscribed again: %s", channel, exc)
            return exc.code
        if channel not in self._subscriptions.active:  # unsubscribed while it was on its way
            with contextlib.suppress(RPCError):  # (a fresh session forgets it anyway)
                await self._leave(channel, timeout)
        return None

    def _ready(self, what: str, timeout: float) -> float:
        """`timeout` as seconds, once `what` may be called.

        Raises:
            ConfigError: `timeout` is not a finite number of seconds, 0 or more.
        """
        timeout = wait_seconds("timeout", timeout)
        if self._v2 is None:
            raise RuntimeError(f"{what}() needs protocol=2")
        if self._runner is None and self._error is None:
            raise RuntimeError("start the connection first (async with connect(...))")
        return timeout


#: Errors after which a subscribe changed nothing (the server keeps a membership it had).
_KEPT_ON: Final = frozenset({"timeout", "disconnected", "unavailable", "rate_limited",
                             "overloaded"})


def _unsubscribe_frame(channel: str, call_id: int) -> str:
    return channel_frame("unsubscribe", call_id, channel)


def _subscribe_frame(channel: str, params: JSONValue, presence: bool, call_id: int) -> str:
    return channel_frame("subscribe", call_id, channel, params, presence=presence)
