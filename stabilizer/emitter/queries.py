"""The emitter's questions about the cluster: who is connected, where, in which groups with
which presence, and which users; the same reads a replica's cluster-wide queries make."""

from __future__ import annotations

from collections.abc import AsyncIterator

from stabilizer.backends.base import Presence
from stabilizer.channel_options import require_presence
from stabilizer.emitter.base import EmitterBase, check_user
from stabilizer.pure.presence import PresenceMap, parse_entry, presence_of
from stabilizer.pure.text import check_batch, check_group


class ClusterQueries(EmitterBase):
    """Cluster-wide queries, answered by Redis."""

    async def get_cluster_connection_count(self) -> int:
        """Count clients connected to any node.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        backend = await self._ready()
        return await self._ask(backend.presence.count(),
                               round_trips=self._config.presence_buckets)

    def get_cluster_connections(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Iterate over the presence of every client on every node, a batch per round trip.

        Raises:
            ValueError: `batch` is not an integer from 1 to 100,000 (at the call).
            BackendUnavailable: Redis cannot be reached (while iterating).
        """
        return self._scan(check_batch(batch))

    async def _scan(self, batch: int) -> AsyncIterator[Presence]:
        backend = await self._ready()
        async for presence in backend.presence.scan(batch):  # each round trip bounded
            yield presence

    async def locate_client(self, client_id: str) -> str | None:
        """Return the id of the node holding `client_id`, or None.

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            BackendUnavailable: Redis cannot be reached.
        """
        client = self._client(client_id)
        backend = await self._ready()
        presence = await self._ask(backend.presence.locate(client))
        return None if presence is None else presence.node_id

    async def get_group_members(self, group: str) -> list[str]:
        """Return the members of `group` on every node, sorted (a resumable session's
        client stays a member).

        Raises:
            ValueError: the group name is not usable.
            BackendUnavailable: Redis cannot be reached.
        """
        name = check_group(group)
        backend = await self._ready()
        return await backend.groups.members(name)  # SSCAN batches, each bounded

    async def get_client_groups(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to, sorted.

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            BackendUnavailable: Redis cannot be reached.
        """
        client = self._client(client_id)
        backend = await self._ready()
        return await backend.groups.of_client(client)  # SSCAN batches, each bounded

    async def get_presence(self, group: str) -> PresenceMap:
        """Return the presence of `group` as the replicas' get_presence does: per key (the
        user id of a member's connection, else its client id) a list of
        ``{"client_id", "meta"}``, one per connection, for the members that joined with
        metadata.

        Raises:
            ValueError: the group name is not usable.
            PresenceDisabledError: the group's namespace turns presence off.
            BackendUnavailable: Redis cannot be reached.
        """
        name = self._with_presence(group)
        backend = await self._ready()
        _, entries = await self._ask(backend.groups.presence_state(name))
        return presence_of(entry for raw in entries.values()
                           if (entry := parse_entry(raw)) is not None)

    async def count_presence(self, group: str) -> int:
        """Return how many connections the presence of `group` lists (O(1)).

        Raises:
            ValueError: the group name is not usable.
            PresenceDisabledError: the group's namespace turns presence off.
            BackendUnavailable: Redis cannot be reached.
        """
        name = self._with_presence(group)
        backend = await self._ready()
        return await self._ask(backend.groups.count_presence(name))

    async def get_user_connections(self, user_id: str) -> list[Presence]:
        """Return every connection of `user_id` (client id, node, since, the user's info),
        oldest first.

        Raises:
            ValueError: the user id is not usable.
            BackendUnavailable: Redis cannot be reached.
        """
        user = check_user(user_id)
        backend = await self._ready()
        return await self._ask(backend.users.connections(user))

    async def get_cluster_user_count(self) -> int:
        """Count users with at least one connection on any node.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        backend = await self._ready()
        return await self._ask(backend.users.count())

    async def get_nodes(self) -> list[str]:
        """Return the ids of live nodes (an emitter is never one).

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        backend = await self._ready()
        return await self._ask(backend.liveness.nodes())

    def _with_presence(self, group: str) -> str:
        """Return `group` if usable and its namespace keeps presence (channel_namespaces)."""
        name = check_group(group)
        require_presence(self._config.channel_options(name), name)
        return name
