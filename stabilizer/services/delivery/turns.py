"""Turns: one holder at a time per key (here, a client id), and no memory for idle keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Turns:
    """Exclusive turns per key; a holder of several keys takes them in sorted order, so two
    holders never wait for each other in a cycle."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, key: object) -> bool:
        """True while a holder has `key`'s turn or waits for it."""
        return key in self._users

    @contextlib.asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        """Wait for the turn of every key in `keys`, and keep them until the block ends."""
        ordered = sorted(set(keys))
        for key in ordered:
            self._users[key] = self._users.get(key, 0) + 1
            self._locks.setdefault(key, asyncio.Lock())
        try:
            async with contextlib.AsyncExitStack() as stack:
                for key in ordered:
                    await stack.enter_async_context(self._locks[key])
                yield
        finally:
            for key in ordered:
                users = self._users[key] - 1
                if users:
                    self._users[key] = users
                else:
                    del self._users[key]
                    del self._locks[key]
