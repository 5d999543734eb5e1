"""Cluster-wide queries: how many clients, which ones, where, and which nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from stabilizer.backends.base import Presence
from stabilizer.facets.base import Facet
from stabilizer.pure.text import is_text


class ClusterFacet(Facet):
    """Questions about every node, answered by the shared store."""

    async def get_cluster_connection_count(self) -> int:
        """Count clients connected to any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.presence.count())

    async def get_cluster_connections(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield the presence of every client on every node, a batch per round trip.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        async for presence in self._ctx.backend.presence.scan(batch):
            yield presence

    async def locate_client(self, client_id: str) -> str | None:
        """Return the id of the node holding `client_id`, or None.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not is_text(client_id) or not client_id:
            return None
        presence = await self._ctx.ask(self._ctx.backend.presence.locate(client_id))
        return None if presence is None else presence.node_id

    async def get_nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        return await self._ctx.ask(self._ctx.backend.liveness.nodes())
