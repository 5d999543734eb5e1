"""Unlisting: after the store lost writes, the check for memberships it gave back on the
group's side only (GroupStore.unlist_returned: a Cluster master of a group restarted from
older data than the master of its member's own group set).

The check reads every group of the namespace, which may be many: so it runs apart from the
settle, after the presence resync (the node's clients are reachable again however long it
takes), in batches with a budget each, for a slice of each maintenance step's period
(UNLIST_SLICE): the node's keepalive never waits long behind many groups.
A batch that fails is logged, and the check starts over at the next step with the local
memberships as they are then (a leave or a join is safe to repeat).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Final

from stabilizer.backends.base import UNLIST_ROUND_TRIPS
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext

logger = logging.getLogger(__name__)

#: The share of node_ttl one maintenance step spends on the check at most (past it, no
#: new batch begins until the next step; the steps come every third of node_ttl).
UNLIST_SLICE: Final = 1 / 6


class Unlisting:
    """The check, after the store lost writes, for memberships it gave back."""

    def __init__(self, ctx: NodeContext, backend_log: RateLimitedLog) -> None:
        self._ctx = ctx
        self._backend_log = backend_log
        self._due = False  # (re)start the check at the next step
        self._batches: AsyncGenerator[int, None] | None = None  # the check under way
        self._taken = 0  # memberships the check under way took out so far

    def begin(self) -> None:
        """The store lost writes and the local presence is registered again: check from the
        start at the next step, with the local memberships as they are then."""
        self._due = True

    async def step(self) -> None:
        """Run batches of the check under way, one at least, until UNLIST_SLICE of node_ttl
        has passed. A batch that fails is logged, and the check starts over at the next
        step."""
        if self._due:
            self._due = False
            await self._drop()
            local = {conn.client_id: frozenset(conn.groups)
                     for conn in self._ctx.pool.connections() if conn.is_open}
            self._batches = self._ctx.backend.groups.unlist_returned(local)
        batches = self._batches
        if batches is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self._ctx.config.node_ttl * UNLIST_SLICE
        try:
            while True:
                taken = await self._ctx.ask(anext(batches, None),
                                            round_trips=UNLIST_ROUND_TRIPS)
                if taken is None:
                    self._finished()
                    return
                self._taken += taken
                if loop.time() >= until:
                    return
        except BackendUnavailable as exc:
            await self._drop()
            self._due = True
            self._backend_log.warning("the check for memberships the store gave back "
                                      "failed; it starts over at the next step", exc=exc)

    def _finished(self) -> None:
        self._batches = None
        if self._taken:
            logger.warning("took %d memberships a store that lost writes gave back out of "
                           "their groups", self._taken)

    async def _drop(self) -> None:
        """End the check under way, if any."""
        batches, self._batches, self._taken = self._batches, None, 0
        if batches is not None:
            await batches.aclose()
