"""What every facet of the facade shares: the assembled node."""

from __future__ import annotations

from stabilizer.node.context import NodeContext
from stabilizer.wiring import Node


class Facet:
    """A part of the manager's public API; `_node` is set by the manager."""

    _node: Node

    @property
    def _ctx(self) -> NodeContext:
        return self._node.ctx
