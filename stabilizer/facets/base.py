"""What every facet of the facade shares: the assembled node."""

from __future__ import annotations

from stabilizer.node.context import NodeContext
from stabilizer.wiring import Node


class Facet:
    """A part of the manager's public API; the manager gives it `_node`."""

    @property
    def _node(self) -> Node:
        raise NotImplementedError  # the manager's: the node serving the running event loop

    @property
    def _ctx(self) -> NodeContext:
        return self._node.ctx
