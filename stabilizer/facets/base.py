"""What every facet of the facade shares: the assembled node."""

from __future__ import annotations

from typing import TypeGuard

from stabilizer.node.context import NodeContext
from stabilizer.pure.text import is_usable_id
from stabilizer.wiring import Node


class Facet:
    """A part of the manager's public API; the manager gives it `_node`."""

    @property
    def _node(self) -> Node:
        raise NotImplementedError  # the manager's: the node serving the running event loop

    @property
    def _ctx(self) -> NodeContext:
        return self._node.ctx

    def _is_client_id(self, client_id: object) -> TypeGuard[str]:
        """True for an id a client can have here (is_usable_id, this node's length limit):
        a public call answers any other as it answers an unknown client, before the
        backend sees it."""
        return is_usable_id(client_id, self._ctx.config.max_client_id_length)

    def _excluded(self, exclude_client: object) -> str | None:
        """The client a send to many skips: nobody for an id no client can have."""
        if exclude_client is None or not self._is_client_id(exclude_client):
            return None
        return exclude_client
