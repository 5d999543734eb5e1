"""The client's inbox: application messages waiting for recv(), bounded."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class Inbox:
    """At most `limit` messages; a full inbox makes the reader wait (back-pressure)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._changed = asyncio.Condition()

    async def put(self, message: str | bytes) -> None:
        """Add a message, waiting while the inbox is full."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._messages) < self._limit)
            self._messages.append(message)
            self._changed.notify_all()

    async def get(self, closed: Callable[[], bool]) -> str | bytes | None:
        """The oldest message, waiting for one; None once `closed()` and nothing is left."""
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
