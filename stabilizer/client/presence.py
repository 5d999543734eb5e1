"""A v2 client's copy of a channel's presence (docs/protocol.md 6.8): it takes the
``presence_state`` frame its subscribe gets, then each ``presence_diff`` (Phoenix's
syncState and syncDiff, in pure/presence.py), and tells the application what changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stabilizer.client.callbacks import refuse_async, unawaited
from stabilizer.pure.presence import PresenceMap, PresenceSync
from stabilizer.pure.waits import wait_seconds

logger = logging.getLogger(__name__)

#: Called with (joins, leaves) after each change of the copy; both are presences.
OnPresenceChange = Callable[[PresenceMap, PresenceMap], object]


class ChannelPresence:
    """Who is in one channel, as the server last said: ``list()`` maps a key (a user id,
    else a client id) to one ``{"client_id", "meta"}`` per connection."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._sync = PresenceSync()
        self._callbacks: list[OnPresenceChange] = []
        self._changed = asyncio.Condition()
        self.synced = False  # a presence_state arrived

    def list(self) -> PresenceMap:
        """The presence as the copy holds it now."""
        return self._sync.list()

    def count(self) -> int:
        """How many connections the copy lists."""
        return self._sync.count()

    def on_change(self, callback: OnPresenceChange) -> OnPresenceChange:
        """Call `callback(joins, leaves)` after every change (usable as a decorator).

        Raises:
            TypeError: `callback` is an ``async def`` function (client/callbacks.py).
        """
        refuse_async(on_change=callback)
        self._callbacks.append(callback)
        return callback

    async def until(self, predicate: Callable[[PresenceMap], bool],
                    timeout: float = 10.0) -> PresenceMap:
        """Wait until `predicate(list())` holds; return that presence.

        Raises:
            TimeoutError: it did not hold within `timeout` seconds.
            ConfigError: `timeout` is not a finite number of seconds, 0 or more.
        """
        async with asyncio.timeout(wait_seconds("timeout", timeout)), self._changed:
            await self._changed.wait_for(lambda: self.synced and predicate(self.list()))
            return self.list()

    async def apply(self, frame: Mapping[str, Any]) -> None:
        """Take a ``presence_state`` or ``presence_diff`` frame of this channel."""
        if frame.get("type") == "presence_state":
            presence = frame.get("presence")
            changed = self._sync.sync_state(presence if isinstance(presence, Mapping) else {})
            self.synced = True
        else:
            changed = self._sync.sync_diff(frame)
        for callback in list(self._callbacks):
            try:
                unawaited(callback(changed["joins"], changed["leaves"]),
                          f"on_change of the presence of {self.channel!r}")
            except Exception:  # the application's bug must not end the connection
                logger.error("on_change of the presence of %r failed", self.channel,
                             exc_info=True)
        async with self._changed:
            self._changed.notify_all()
