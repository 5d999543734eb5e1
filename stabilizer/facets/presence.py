"""Presence with state: the metadata of each group member, on every node."""

from __future__ import annotations

from typing import Any

from stabilizer.channel_options import require_presence
from stabilizer.errors import ConnectionNotFoundError, NotAMemberError
from stabilizer.facets.base import Facet
from stabilizer.pure.presence import PresenceMap, encode_meta, entry_text, parse_entry, presence_of
from stabilizer.pure.text import check_client_id, check_group


class PresenceFacet(Facet):
    """Who is in a group, with their metadata (``join_group(..., presence=...)``)."""

    async def update_presence(self, client_id: str, group: str, meta: dict[str, Any]) -> None:
        """Replace the presence metadata of a member of `group`, connected to any node;
        members following the group's presence get the change.

        Raises:
            ValueError: the group name is not usable, or `meta` is not a dict, not
                JSON-serialisable or over 1 KiB as JSON.
            ConnectionNotFoundError: the client is not connected anywhere.
            NotAMemberError: the client is not a member of `group`.
            PresenceDisabledError: the group's namespace turns presence off.
            BackendUnavailable: the shared store cannot be reached.
        """
        self._require_presence(check_group(group))
        check_client_id(client_id, self._ctx.config.max_client_id_length)
        meta_json = encode_meta(meta)
        ctx = self._ctx
        conn = ctx.pool.get(client_id)
        if conn is not None:
            user_id = conn.user_id
        else:
            owner = (await ctx.ask(ctx.backend.presence.locate(client_id))
                     if ctx.backend.is_shared else None)
            if owner is None:
                raise ConnectionNotFoundError(f"client {client_id!r} is not connected")
            user_id = owner.user_id
        entry = entry_text(client_id, user_id, meta_json)
        if not await self._node.membership.entries.update_presence(client_id, group, entry):
            raise NotAMemberError(f"client {client_id!r} is not a member of {group!r}; "
                                  "join_group first")

    async def get_presence(self, group: str) -> PresenceMap:
        """Return the presence of `group` on every node: per key (the user id of a
        member's connection, else its client id) a list of ``{"client_id", "meta"}``, one
        per connection, for the members that joined with metadata.

        Raises:
            ValueError: the group name is not usable.
            PresenceDisabledError: the group's namespace turns presence off.
            BackendUnavailable: the shared store cannot be reached.
        """
        name = self._require_presence(check_group(group))
        _, entries = await self._ctx.ask(self._ctx.backend.groups.presence_state(name))
        return presence_of(entry for raw in entries.values()
                           if (entry := parse_entry(raw)) is not None)

    async def count_presence(self, group: str) -> int:
        """Return how many connections the presence of `group` lists (O(1)).

        Raises:
            ValueError: the group name is not usable.
            PresenceDisabledError: the group's namespace turns presence off.
            BackendUnavailable: the shared store cannot be reached.
        """
        name = self._require_presence(check_group(group))
        return await self._ctx.ask(self._ctx.backend.groups.count_presence(name))

    def _require_presence(self, group: str) -> str:
        require_presence(self._ctx.config.channel_options(group), group)
        return group
