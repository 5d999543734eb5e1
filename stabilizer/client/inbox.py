"""The client's inbox: application messages waiting for recv(), each with the
acknowledgement it owes once the application handled it, if any.

It holds at most `limit` messages: a full inbox makes the socket's reader wait, so a slow
application slows the server down (back-pressure) until the server closes the socket
(4000, 1013) and the client reconnects, keeping what it holds. Except while a request
waits for its reply: the reply comes on the same socket, after whatever the server sent
before it, so a reader that waited for the application (perhaps the very caller, in its
message loop) would never get to it. While any request waits, messages that do not fit
are kept beyond the limit, in order, and the reader reads on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

#: An acknowledgement owed: the token and the socket the message came on.
Owed = tuple[str, Any]


class Inbox:
    """At most `limit` messages but while a request waits; when full, put() waits."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: collections.deque[tuple[str | bytes, Owed | None]] = collections.deque()
        self._changed = asyncio.Condition()
        self._requests = 0  # waiting for their replies, which the reader must get to

    async def put(self, message: str | bytes, owed: Owed | None = None) -> None:
        """Add a message, waiting while the inbox is full and no request waits."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: len(self._messages) < self._limit or self._requests > 0)
            self._messages.append((message, owed))
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Let put() go beyond the limit until the request this spans has its reply."""
        async with self._changed:
            self._requests += 1
            self._changed.notify_all()  # a reader waiting for room reads on
        try:
            yield
        finally:
            self._requests -= 1  # (a put waits again once the inbox is full and none waits)

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
