"""Groups: cluster-wide membership and sends to members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from stabilizer.channel_options import require_presence
from stabilizer.facets.base import Facet
from stabilizer.pure.presence import encode_meta
from stabilizer.pure.streams import Target
from stabilizer.pure.text import Message, check_client_id, check_group, encode_message, json_value
from stabilizer.results import BroadcastResult

#: Groups count_group_members counts in one call at most.
MAX_COUNTED_GROUPS: Final = 1000


class GroupsFacet(Facet):
    """Named groups of clients, on every node."""

    async def send_to_group(self, group: str, message: Message,
                            exclude_client: str | None = None) -> BroadcastResult:
        """Send to every member of `group` on every node except `exclude_client` (an id no
        client can have excludes nobody); the result counts local members (with history:
        sequenced, unless the group's namespace keeps no history).

        Raises:
            ValueError: the group name is not usable.
        """
        payload = encode_message(message)
        return await self._node.router.publish(Target("group", check_group(group)), payload,
                                               self._excluded(exclude_client),
                                               json_value(message))

    async def join_group(self, client_id: str, group: str,
                         presence: dict[str, Any] | None = None) -> None:
        """Add a client connected to any node to `group` (cluster-wide); with `presence`
        (a JSON object of at most 1 KiB), the member is listed in the group's presence
        with that metadata until its membership ends (see get_presence).

        Raises:
            ValueError: the group name is empty, too long or not text, or `presence` is
                not a dict, not JSON-serialisable or too big.
            PresenceDisabledError: `presence` is given for a group whose namespace turns
                presence off.
            ConnectionNotFoundError: the client is not connected anywhere.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self._ctx.config.max_client_id_length)
        if presence is not None:
            require_presence(self._ctx.config.channel_options(group), group)
        meta_json = None if presence is None else encode_meta(presence)
        await self._node.membership.join(client_id, group, meta_json)

    async def leave_group(self, client_id: str, group: str) -> None:
        """Remove a client from `group` (no error if it was not a member).

        Raises:
            ValueError: the group name is not usable.
            BackendUnavailable: the shared store cannot be reached.
        """
        check_group(group)
        check_client_id(client_id, self._ctx.config.max_client_id_length)
        await self._node.membership.leave(client_id, group)

    async def get_group_members(self, group: str) -> list[str]:
        """Return the members of `group` on every node (a resumable session's client stays
        a member).

        Raises:
            ValueError: the group name is not usable.
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._ctx.ask(self._ctx.backend.groups.members(check_group(group)))

    async def count_group_members(self, groups: Sequence[str]) -> dict[str, int]:
        """Return how many members each of `groups` has on every node, as
        get_group_members lists them (a resumable session's client included), in one
        batched read of at most MAX_COUNTED_GROUPS groups; a group without members counts 0.

        Raises:
            ValueError: a group name is not usable, or there are too many.
            BackendUnavailable: the shared store cannot be reached.
        """
        if isinstance(groups, str) or len(groups) > MAX_COUNTED_GROUPS:
            raise ValueError(f"give a sequence of at most {MAX_COUNTED_GROUPS} group names")
        names = [check_group(group) for group in groups]
        return await self._ctx.ask(self._ctx.backend.groups.count_members(names))

    async def get_client_groups(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to (cluster-wide); [] for an unknown or
        invalid client.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        if not self._is_client_id(client_id):
            return []
        return await self._ctx.ask(self._ctx.backend.groups.of_client(client_id))
