"""MemoryBackend: the embedded default, one node in one process (or several nodes sharing a
MemoryHub in one event loop, as the contract tests use it)."""

from __future__ import annotations

from typing import Final

from stabilizer.backends.base import TaskSpawner
from stabilizer.backends.memory.hub import Inbox, MemoryHub
from stabilizer.backends.memory.nodes import (
    MemoryEvents,
    MemoryLiveness,
    MemoryNode,
    MemoryPresence,
    MemoryRouting,
    MemoryTokens,
)
from stabilizer.backends.memory.streams import MemoryGroups, MemoryHistory, MemorySessions
from stabilizer.backends.memory.users import MemoryUsers
from stabilizer.stats import BackendStats

_DEFAULT_QUEUE: Final = 10_000


class MemoryBackend:
    """A node's view of a MemoryHub (a private hub unless one is given); its inbox holds
    `inbox_size` envelopes, past which it is cut as a lost subscription (see MemoryHub)."""

    def __init__(self, hub: MemoryHub | None = None, *, inbox_size: int = _DEFAULT_QUEUE) -> None:
        self._node = MemoryNode(hub if hub is not None else MemoryHub())
        self._shared = hub is not None
        self._inbox_size = inbox_size
        self._stats = BackendStats()
        self.presence = MemoryPresence(self._node)
        self.users = MemoryUsers(self._node)
        self.routing = MemoryRouting(self._node)
        self.groups = MemoryGroups(self._node)
        self.history = MemoryHistory(self._node)
        self.sessions = MemorySessions(self._node)
        self.tokens = MemoryTokens(self._node)
        self.liveness = MemoryLiveness(self._node)
        self.events = MemoryEvents(self._node)

    @property
    def name(self) -> str:
        """``memory``."""
        return "memory"

    @property
    def is_shared(self) -> bool:
        """True when built on a hub that other managers may share."""
        return self._shared

    @property
    def available(self) -> bool:
        """Always True until closed."""
        return not self._node.closed

    @property
    def stats(self) -> BackendStats:
        """Empty: in-process operations are not measured."""
        return self._stats

    @property
    def hub(self) -> MemoryHub:
        """The hub this backend uses."""
        return self._node.hub

    def successor(self) -> MemoryBackend:
        """A backend on the same hub, shared as this one is, for the node starting again in
        a new event loop (this one's inbox belongs to the loop that ended)."""
        backend = MemoryBackend(self._node.hub, inbox_size=self._inbox_size)
        backend._shared = self._shared
        return backend

    async def open(self, node_id: str, tasks: TaskSpawner, *, events: bool = False,
                   sessions: bool = False, receives: bool = True) -> None:
        """Join the hub as `node_id` (this backend starts no task of its own); without
        `receives` (an emitter) it gets no inbox and holds no clients."""
        node = self._node
        node.node_id = node_id
        node.closed = False
        node.events = events
        node.sessions = sessions
        if receives:
            node.hub.inboxes[node_id] = Inbox(self._inbox_size)
            node.hub.node_clients.setdefault(node_id, set())

    async def aclose(self) -> None:
        """Leave the hub (presence stays, as after a crash, unless unregister_node ran)."""
        self._node.closed = True
        self._node.hub.inboxes.pop(self._node.node_id, None)
