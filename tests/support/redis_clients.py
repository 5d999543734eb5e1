"""Which connections a Redis server holds that it did not hold when the watch began: what a
manager opened and left open shows here, whatever its client library believes."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from redis.asyncio import Redis

_POLL = 0.05  # the server sees a closed socket a moment after the client closed it


class ClientWatch:
    """A control connection to one server; `opened()` lists the connections (by id) that
    were not there when the watch began, its own excepted."""

    def __init__(self, url: str) -> None:
        self._control = Redis.from_url(url)
        self._before: set[int] = set()

    async def __aenter__(self) -> Self:
        self._before = await self._ids()  # (its own connection included)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._control.aclose()

    async def _ids(self) -> set[int]:
        return {int(client["id"]) for client in await self._control.client_list()}

    async def opened(self) -> set[int]:
        """The connections opened since the watch began and still open."""
        return await self._ids() - self._before

    async def settled_open(self, bound: float = 5.0) -> set[int]:
        """The connections opened since the watch began that are still open once the
        server had up to `bound` seconds to see the closed ones go (empty at once when
        every one has gone: a bounded poll, the server tells no one of a close)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + bound
        while (still := await self.opened()) and loop.time() < give_up:
            await asyncio.sleep(_POLL)
        return still
