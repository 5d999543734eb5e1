"""The client's inbox: application messages waiting for recv(), bounded; each with the
acknowledgement it owes once the application handled it, if any."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

#: An acknowledgement owed: the token and the socket the message came on.
Owed = tuple[str, Any]


class Inbox:
    """At most `limit` messages; a full inbox makes the reader wait (back-pressure)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: collections.deque[tuple[str | bytes, Owed | None]] = collections.deque()
        self._changed = asyncio.Condition()

    async def put(self, message: str | bytes, owed: Owed | None = None) -> None:
        """Add a message, waiting while the inbox is full."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._messages) < self._limit)
            self._messages.append((message, owed))
            self._changed.notify_all()

    async def get(self, closed: Callable[[], bool]
                  ) -> tuple[str | bytes, Owed | None] | None:
        """The oldest message and its acknowledgement, waiting for one; None once
        `closed()` and nothing is left."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._messages) or closed())
            if not self._messages:
                return None
            message = self._messages.popleft()
            self._changed.notify_all()
            return message

    async def wake(self) -> None:
        """Let waiting readers see that the connection closed."""
        async with self._changed:
            self._changed.notify_all()
