"""The client's inbox: application messages waiting for recv(), each with the token of
the acknowledgement it owes once the application handled it, if any (client/acks.py).

It holds at most `limit` messages, and taking one never waits: the socket's reader must
always get on to the frames behind it (a ping to answer, a close, a request's reply), so it
never waits for the application. A message that finds the inbox full is turned away, and
so is every later one from the same socket (the socket is *behind*): what the inbox holds
stays a prefix of what the socket brought, so the positions the client records (history)
say exactly where a resume must start (or earlier, for a message whose acknowledgement is
owed: pure/client_acks.py). The connection then replaces the socket, at once,
once the application has drained the inbox to half (`resume_at`: ``limit // 2`` messages
or fewer; client/connection.py): each resume admits at least half an inbox while the
application still has work, so a burst of N messages costs about N / (limit / 2) resumes,
not one per message taken. With history the resume replays what was turned away; without,
it is lost, and the resume says so (``recovered`` false)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from stabilizer.errors import ConfigError

#: The reason a client closes a socket with (1013) when its application fell behind.
FELL_BEHIND = "the application fell behind; resuming"


class Inbox:
    """At most `limit` messages; offer() never waits, and refuses once the socket is
    behind."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_inbox_messages must be a positive integer, got {limit!r}")
        self.limit = limit
        self.resume_at = limit // 2  # a socket behind is replaced once at most this many wait
        self.admitted = 0  # the messages kept from the current socket
        self._messages: collections.deque[tuple[str | bytes, str | None]] = collections.deque()
        self._added = asyncio.Event()
        self._taken = asyncio.Event()
        self._behind = asyncio.Event()  # a message of this socket was turned away

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def behind(self) -> bool:
        """A message of the current socket was turned away (so are the ones after it)."""
        return self._behind.is_set()

    def offer(self, message: str | bytes, ack: str | None = None) -> bool:
        """Keep a message if the socket is not behind and there is room; else turn it away
        (the socket is behind from then on) and return False."""
        if self._behind.is_set() or len(self._messages) >= self.limit:
            self._behind.set()
            return False
        self._messages.append((message, ack))
        self.admitted += 1
        self._added.set()
        return True

    def new_socket(self) -> None:
        """A new socket begins: its messages are taken again (what is held stays)."""
        self._behind.clear()
        self.admitted = 0

    async def fell_behind(self) -> None:
        """Wait until the current socket is behind, then until the application has drained
        the inbox to `resume_at`, so that a new socket's replay has room for half an inbox
        at least."""
        await self._behind.wait()
        while len(self._messages) > self.resume_at:
            self._taken.clear()
            await self._taken.wait()

    async def get(self, closed: Callable[[], bool]
                  ) -> tuple[str | bytes, str | None] | None:
        """The oldest message and its acknowledgement's token, waiting for one; None once
        `closed()` and nothing is left."""
        while not self._messages:
            if closed():
                return None
            self._added.clear()
            await self._added.wait()
        message = self._messages.popleft()
        self._taken.set()
        return message

    def wake(self) -> None:
        """Let waiting readers see that the connection closed."""
        self._added.set()
