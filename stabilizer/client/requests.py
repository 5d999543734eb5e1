"""What a v2 client asks of the server and gets a ``reply`` to: remote procedure calls
and its own channel subscriptions and publications (docs/protocol.md 6.5 and 6.6).

A subscription with an ``on_message`` callback takes its channel's messages out of the
inbox: they go to the callback instead, from the moment the reader reads the subscribe's
reply (the messages right behind it included) until it reads the reply to the
application's unsubscribe (the server sent those before the leave). Subscriptions are
the server's group memberships, so a session resumed with history keeps them (those that
follow presence are subscribed again, once its resume frame came: the server follows
presence per connection); after any other reconnect (no history, or a fresh session) the
client subscribes again to each. The
server's hook decides again: a refusal ends that subscription, with a warning in the log
(into a session that kept the membership the client leaves the channel first: a refusal
changes no membership on the server), and its ``on_unsubscribed`` is told; a "try later"
answer (``unavailable``, ``overloaded``, ``rate_limited``, ``timeout``) is asked again after
the retry policy's backoff, with a warning in the log. When the server
ends one itself (an ``unsubscribed`` frame: the application took the client out of the
channel, live or while the client was away), the client forgets it too, and its
``on_unsubscribed`` callback is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection as WebSocket

from stabilizer.client.callbacks import notify, refuse_async
from stabilizer.client.calls import PendingCalls
from stabilizer.client.presence import ChannelPresence, OnPresenceChange
from stabilizer.client.subscriptions import (
    OnMessage,
    OnUnsubscribed,
    Subscription,
    Subscriptions,
)
from stabilizer.client.v2 import ProtocolV2
from stabilizer.errors import RPCError
from stabilizer.logs import RateLimitedLog
from stabilizer.pure.client_protocol import ClientClosedError
from stabilizer.pure.client_retry import TRY_LATER_CODES, RetryPolicy, resubscribe_delay
from stabilizer.pure.client_v2 import channel_frame, rpc_frame
from stabilizer.pure.streams import group_stream
from stabilizer.pure.text import JSONValue
from stabilizer.pure.waits import wait_seconds

if TYPE_CHECKING:  # (frames.py imports this module)
    from stabilizer.client.frames import Frames

logger = logging.getLogger(__name__)

# (the records moved to client/subscriptions.py; importable from here as before)
__all__ = ["OnMessage", "OnUnsubscribed", "Requests", "Subscription", "Subscriptions"]


class Requests:
    """rpc, subscribe, unsubscribe and publish for ClientConnection (protocol v2)."""

    _calls: PendingCalls
    _subscriptions: Subscriptions
    _v2: ProtocolV2 | None
    _runner: asyncio.Task[None] | None
    _error: ClientClosedError | None
    _wait_open: Callable[[WebSocket | None], Awaitable[WebSocket]]
    _frames: Frames
    _retry: RetryPolicy
    _ws: WebSocket | None

    async def rpc(self, method: str, params: JSONValue = None, *,
                  timeout: float = 30.0) -> JSONValue:
        """Call the server's procedure `method` with `params` (any JSON value) and return
        its result; waits while reconnecting (docs/protocol.md 6.5).

        Raises:
            RPCError: the server's error (``code``, ``message``, ``data``), or ``timeout``
                (no reply within `timeout` seconds) or ``disconnected`` (the socket closed
                before the reply): in both the call may have run; it is never sent twice.
            ValueError, TypeError: a method name the server refuses, or params not JSON;
                ValueError for a frame over the server's max_message_size (not sent).
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
        again after a reconnect), the client forgets it and calls `on_unsubscribed(reason)`;
        a subscribe made again and answered "try later" (``unavailable``, ``overloaded``,
        ``rate_limited``, ``timeout``) is asked again after the retry policy's backoff.
        One that fails changes nothing the client holds: a channel subscribed already keeps
        its callbacks, and follows presence only if it did (a subscribe without presence
        of a channel that follows it does not stop that: the server goes on following).

        Raises:
            RPCError: refused (``forbidden`` or the hook's own code), ``unavailable``,
                ``timeout`` or ``disconnected`` (as for rpc).
            ValueError, TypeError: a channel name the server refuses, or params not JSON;
                ValueError for a frame over the server's max_message_size (not sent).
            TypeError: an ``async def`` callback (callbacks are plain functions: the
                client calls them from its reader and never awaits them).
        """
        refuse_async(on_message=on_message, on_presence=on_presence,
                     on_unsubscribed=on_unsubscribed)
        if on_presence is not None and not presence:
            raise ValueError("on_presence needs presence=True")
        timeout = self._ready("subscribe", timeout)
        subscriptions = self._subscriptions
        entry = Subscription(on_message, params, presence, on_unsubscribed)
        number = subscriptions.subscribing(channel)

        def on_reply(succeeded: bool) -> None:  # (in the reader, before the channel's frames)
            subscriptions.subscribed(channel, number, entry if succeeded else None,
                                     on_presence)

        await self._calls.call(
            self._wait_open, functools.partial(_subscribe_frame, channel, params, presence),
            timeout, on_reply)

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
        """Leave `channel`; its messages stop. Those the server sent before the leave (read
        before the reply) still go to the subscription's `on_message`.

        Raises:
            RPCError: ``unavailable``, ``timeout`` or ``disconnected``.
        """
        timeout = self._ready("unsubscribe", timeout)
        self._subscriptions.unsubscribing(channel, until_reply=True)
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
        subscriptions = self._subscriptions
        subscriptions.leaves(channel)
        positions, stream = self._frames.positions, group_stream(channel)
        last = positions.get(stream)
        positions.forget(stream)
        try:
            await self._calls.call(
                self._wait_open, functools.partial(_unsubscribe_frame, channel), timeout,
                lambda _succeeded: subscriptions.left(channel))  # (in the reader, at once)
        except BaseException:
            if channel in subscriptions.active:
                positions.restore(stream, last)
            raise

    async def publish(self, channel: str, data: str | dict[str, Any] | list[Any], *,
                      timeout: float = 30.0) -> None:
        """Send `data` to every member of `channel` if the server's ``on_publish`` hook
        allows it (it may rewrite it); return once the server sent it.

        Raises:
            RPCError: refused (``forbidden`` or the hook's own code), ``unavailable``
                (not sent to other replicas), ``timeout`` or ``disconnected``.
            ValueError, TypeError: a bad channel name, or data that is not a str, dict or
                list of JSON; ValueError for a frame over the server's max_message_size
                (not sent).
        """
        timeout = self._ready("publish", timeout)
        await self._calls.call(
            self._wait_open, lambda ident: channel_frame("publish", ident, channel, data),
            timeout)

    async def _subscribe_again(self, timeout: float, *, presence_only: bool = False) -> None:
        """After a reconnect that kept no memberships: subscribe to every channel again;
        after one that kept them, to those that follow presence (the server follows it
        per connection), which sends their state again. A "try later" answer
        (TRY_LATER_CODES) changed nothing: those channels are asked again after the retry
        policy's backoff, until allowed or refused (after ``max_attempts`` such answers in
        a row, the last counts as a refusal), or the application leaves the channel. The
        round ends with the socket it began on: the next reconnect starts its own."""
        subscriptions, pinned = self._subscriptions, self._ws
        log = RateLimitedLog(logger)  # (the round's retries: one warning per interval)
        asking = [(channel, entry) for channel, entry in subscriptions.active.items()
                  if not presence_only or entry.presence]
        failures = 0
        try:
            while later := await self._ask_each(asking, presence_only, timeout, pinned):
                failures += 1
                delay = resubscribe_delay(self._retry, failures)
                channel, _entry, code = later[0]
                if delay is None:
                    logger.warning("%d channel(s) not subscribed again after %d answers in a "
                                   "row (%r: %s); giving up", len(later), failures, channel,
                                   code)
                    for channel, entry, code in later:
                        await self._refused(channel, entry, code, presence_only, timeout)
                    return
                log.warning("%d channel(s) not subscribed again (%r: %s); asking again in "
                            "%.2fs", len(later), channel, code, delay)
                await asyncio.sleep(delay)
                if self._ws is not pinned:
                    return  # the socket closed: the next reconnect asks again
                asking = [(channel, entry) for channel, entry, _code in later]
        except (ClientClosedError, _SocketLost):
            return

    async def _ask_each(self, asking: list[tuple[str, Subscription]], kept: bool, timeout: float,
                        pinned: WebSocket | None) -> list[tuple[str, Subscription, str]]:
        """Subscribe again, on `pinned`, to each channel in `asking` still subscribed as it
        was; end those refused; return those answered "try later", with the code.

        Raises:
            _SocketLost: `pinned` closed.
            ClientClosedError: closed for good.
        """
        later: list[tuple[str, Subscription, str]] = []
        for channel, entry in asking:
            if self._subscriptions.active.get(channel) is not entry:
                continue  # (unsubscribed, or subscribed anew, meanwhile)
            code = await self._ask_again(channel, entry, timeout, pinned)
            if code in TRY_LATER_CODES:
                later.append((channel, entry, code))
            elif code is not None:
                await self._refused(channel, entry, code, kept, timeout)
        return later

    async def _ask_again(self, channel: str, entry: Subscription, timeout: float,
                         pinned: WebSocket | None) -> str | None:
        """Subscribe to `channel` again on `pinned`, as `entry` holds it (with presence only
        when a presence subscribe of it succeeded): the answer's code, or None (allowed).
        One whose frame is over the server's max_message_size is not sent, and counts as
        refused with ``bad_request``.

        Raises:
            _SocketLost: `pinned` closed, before the request or its reply.
            ClientClosedError: closed for good.
        """
        async def on_pinned(stale: WebSocket | None) -> WebSocket:
            if pinned is None or self._ws is not pinned or stale is pinned:
                raise _SocketLost
            return pinned

        try:
            await self._calls.call(on_pinned, functools.partial(
                _subscribe_frame, channel, entry.params, entry.presence), timeout)
        except RPCError as exc:
            if exc.code == "disconnected":
                raise _SocketLost from exc
            if exc.code not in TRY_LATER_CODES:
                logger.warning("channel %r was not subscribed again: %s", channel, exc)
            return exc.code
        except ValueError as exc:  # (its frame is over what this server takes)
            logger.warning("channel %r was not subscribed again: %s", channel, exc)
            return "bad_request"
        if channel not in self._subscriptions.active:  # unsubscribed while it was on its way
            with contextlib.suppress(RPCError):  # (a fresh session forgets it anyway)
                await self._leave(channel, timeout)
        return None

    async def _refused(self, channel: str, entry: Subscription, code: str, kept: bool,
                       timeout: float) -> None:
        """`channel`, subscribed again, was refused with `code`: end its subscription and
        tell its `on_unsubscribed`; into a `kept` session leave it first (a refusal changes
        no membership on the server), its messages going to the subscription meanwhile.
        When that unsubscribe fails, the subscription stays: the next reconnect asks again.

        Raises:
            ClientClosedError: closed for good.
        """
        active = self._subscriptions.active
        if kept and active.get(channel) is entry:
            try:
                await self._leave(channel, timeout)
            except RPCError as exc:
                logger.warning("channel %r was refused, but not left: %s", channel, exc)
                return
        if active.get(channel) is entry:
            self._subscriptions.forget(channel)
            self._frames.positions.forget(group_stream(channel))
            notify(entry.on_unsubscribed, code)

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


class _SocketLost(Exception):
    """The socket a round of subscribing again began on closed."""


def _unsubscribe_frame(channel: str, call_id: int) -> str:
    return channel_frame("unsubscribe", call_id, channel)


def _subscribe_frame(channel: str, params: JSONValue, presence: bool, call_id: int) -> str:
    return channel_frame("subscribe", call_id, channel, params, presence=presence)
