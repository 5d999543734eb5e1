"""Cluster-wide queries: how many clients, which ones, where, and which nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from stabilizer.backends.base import NodeReport, Presence
from stabilizer.config import CloseCode
from stabilizer.facets.base import Facet
from stabilizer.pure.text import check_batch


class ClusterFacet(Facet):
    """Questions about every node, answered by the shared store."""

    async def get_cluster_connection_count(self) -> int:
        """Count clients connected to any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.presence.count())

    def get_cluster_connections(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Iterate over the presence of every client on every node, a batch per round trip.

        Raises:
            ValueError: `batch` is not an integer from 1 to 100,000 (at the call).
            BackendUnavailable: the shared store cannot be reached (while iterating).
        """
        return self._ctx.backend.presence.scan(check_batch(batch))

    async def locate_client(self, client_id: str) -> str | None:
        """Return the id of the node holding `client_id`, or None.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not self._is_client_id(client_id):
            return None
        presence = await self._ctx.ask(self._ctx.backend.presence.locate(client_id))
        return None if presence is None else presence.node_id

    async def find_client(self, client_id: str) -> Presence | None:
        """Return where `client_id` is connected (node, conn id, since, user), or None.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not self._is_client_id(client_id):
            return None
        return await self._ctx.ask(self._ctx.backend.presence.locate(client_id))

    async def disconnect_client(self, client_id: str, *, code: int = CloseCode.NORMAL,
                                reason: str = "disconnected by the server") -> bool:
        """Close the connection of `client_id` on whichever node holds it (on another node:
        one CLIENT_CLOSE envelope, as Emitter.disconnect_client sends); True if this node
        closed it or the node holding it received the request.

        Raises:
            ValueError: `code` cannot be sent (1000, 1001, 1008, 1011-1013, 3000-4999 can).
            BackendUnavailable: the client is elsewhere and the store cannot be reached.
        """
        return await self._node.users.disconnect_client(client_id, int(code), reason)

    async def get_nodes(self) -> list[str]:
        """Return the ids of live nodes."""
        return await self._ctx.ask(self._ctx.backend.liveness.nodes())

    def get_node_report(self) -> NodeReport:
        """Return this node's report as of now (counters, outbox pressure, local groups),
        gathered in one pass over the connections (survey_node_report yields meanwhile)."""
        return self._node.reporter.current()

    async def survey_node_report(self) -> NodeReport:
        """Return this node's report as of now, like get_node_report, letting the event
        loop run after each slice of max_concurrent_broadcast connections (or groups)."""
        return await self._node.reporter.survey()

    async def get_node_reports(self) -> list[NodeReport]:
        """Return the latest report of every node that wrote one (each writes its own with
        every keepalive, so it may be up to node_ttl / 3 old; a dead node's stays until a
        survivor reaps it).

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.liveness.reports())
