"""In-process backend: the embedded default for one node.

Several managers may share one MemoryHub in the same event loop; they then behave as nodes
of one cluster (presence, routing, kicks, tokens, liveness), which is how the backend
contract tests run the same scenarios on memory and on Redis. Without a hub argument every
backend gets a private hub, i.e. a single node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Final

from stabilizer.backends.base import (
    History,
    Liveness,
    Presence,
    Registration,
    Sequenced,
    SessionState,
    Target,
)
from stabilizer.errors import BackendUnavailable, ConnectionLimitExceededError
from stabilizer.wire import Envelope, Kind, encode

logger = logging.getLogger(__name__)

_DEFAULT_QUEUE: Final = 10_000


class _Stream:
    """One history stream: epoch, last offset, bounded entries, expiry times."""

    __slots__ = ("entries", "entries_until", "epoch", "offset", "until")

    def __init__(self) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.entries: deque[tuple[int, bytes]] = deque()
        self.entries_until = 0.0
        self.until = 0.0


class _Session:
    __slots__ = ("baselines", "until", "user_data")

    def __init__(self) -> None:
        self.user_data: dict[str, bytes] = {}
        self.baselines: dict[str, tuple[int, str]] = {}
        self.until: float | None = None


class MemoryHub:
    """State shared by the memory backends of one process (one event loop)."""

    def __init__(self) -> None:
        self.groups: dict[str, set[str]] = {}
        self.client_groups: dict[str, set[str]] = {}
        self.group_nodes: dict[str, set[str]] = {}
        self.streams: dict[str, _Stream] = {}
        self.sessions: dict[str, _Session] = {}
        self.away: dict[str, float] = {}
        self.presence: dict[str, Presence] = {}
        self.node_clients: dict[str, set[str]] = {}
        self.node_deadlines: dict[str, float] = {}
        self.inboxes: dict[str, asyncio.Queue[bytes]] = {}
        self.used_nonces: dict[str, float] = {}
        self.secret = secrets.token_bytes(32)
        self.dropped = 0

    def deliver(self, node_id: str, envelope: bytes) -> bool:
        """Put an envelope in a node's inbox; drop (and count) when the inbox is full."""
        inbox = self.inboxes.get(node_id)
        if inbox is None:
            return False
        try:
            inbox.put_nowait(envelope)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("memory inbox of node %s is full; envelope dropped", node_id)
            return False
        return True

    def stream(self, name: str, now: float) -> _Stream | None:
        """The live state of a stream, forgetting it once its time ran out."""
        state = self.streams.get(name)
        if state is not None and state.until <= now:
            del self.streams[name]
            return None
        if state is not None and state.entries_until <= now:
            state.entries.clear()
        return state

    def session(self, client_id: str, now: float) -> _Session | None:
        """The session of `client_id` if it is live or still resumable."""
        record = self.sessions.get(client_id)
        if record is not None and record.until is not None and record.until <= now:
            return None
        return record

    def position(self, stream: str, now: float) -> tuple[int, str]:
        """Where `stream` stands now: (last offset, epoch), or (0, "") if it has none."""
        state = self.stream(stream, now)
        return (0, "") if state is None else (state.offset, state.epoch)

    def end_session(self, client_id: str) -> list[str]:
        """Drop a session and its group memberships; return the groups left."""
        self.sessions.pop(client_id, None)
        self.away.pop(client_id, None)
        left = sorted(self.client_groups.pop(client_id, set()))
        for group in left:
            members = self.groups.get(group)
            if members is not None:
                members.discard(client_id)
                if not members:
                    del self.groups[group]
        return left

    def drop_presence(self, client_id: str, conn_id: str | None = None) -> bool:
        """Remove a client's presence (only if it names `conn_id`, when given)."""
        current = self.presence.get(client_id)
        if current is None or (conn_id is not None and current.conn_id != conn_id):
            return False
        del self.presence[client_id]
        owned = self.node_clients.get(current.node_id)
        if owned is not None:
            owned.discard(client_id)
        return True


class MemoryBackend:
    """A node's view of a MemoryHub."""

    def __init__(self, hub: MemoryHub | None = None, *, inbox_size: int = _DEFAULT_QUEUE) -> None:
        self._hub = hub if hub is not None else MemoryHub()
        self._shared = hub is not None
        self._inbox_size = inbox_size
        self._node_id = ""
        self._closed = False
        self._subscribed = asyncio.Event()
        self.events = False

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
        return not self._closed

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while deliveries() runs."""
        return self._subscribed

    @property
    def hub(self) -> MemoryHub:
        """The hub this backend uses."""
        return self._hub

    def _check(self) -> None:
        if self._closed:
            raise BackendUnavailable("memory backend is closed")

    async def open(self, node_id: str) -> None:
        """Join the hub as `node_id`."""
        self._node_id = node_id
        self._closed = False
        self._hub.inboxes[node_id] = asyncio.Queue(self._inbox_size)
        self._hub.node_clients.setdefault(node_id, set())

    async def aclose(self) -> None:
        """Leave the hub (presence stays, as after a crash, unless unregister_node ran)."""
        self._closed = True
        self._hub.inboxes.pop(self._node_id, None)

    async def deliveries(self) -> AsyncIterator[bytes]:
        """Yield envelopes other nodes addressed to this node."""
        self._check()
        inbox = self._hub.inboxes[self._node_id]
        self._subscribed.set()
        try:
            while True:
                yield await inbox.get()
        finally:
            self._subscribed.clear()

    async def register(self, presence: Presence, *, max_cluster: int | None) -> Registration:
        """Record presence; kick a previous socket on another node."""
        self._check()
        hub = self._hub
        previous = hub.presence.get(presence.client_id)
        if previous is None and max_cluster is not None and len(hub.presence) >= max_cluster:
            raise ConnectionLimitExceededError(
                f"cluster connection limit ({max_cluster}) reached"
            )
        if previous is not None:
            hub.drop_presence(previous.client_id)
            if previous.node_id != presence.node_id:
                kick = Envelope(Kind.KICK, presence.node_id, presence.client_id,
                                ref=previous.conn_id)
                hub.deliver(previous.node_id, encode(kick))
        hub.presence[presence.client_id] = presence
        hub.node_clients.setdefault(presence.node_id, set()).add(presence.client_id)
        return Registration(previous)

    async def unregister(self, client_id: str, conn_id: str) -> bool:
        """Remove presence if it still names `conn_id`."""
        self._check()
        return self._hub.drop_presence(client_id, conn_id)

    async def publish(self, envelope: bytes) -> int:
        """Deliver to every other node's inbox."""
        self._check()
        reached = 0
        for node_id in list(self._hub.inboxes):
            if node_id != self._node_id and self._hub.deliver(node_id, envelope):
                reached += 1
        return reached

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """Deliver to the node owning `client_id`."""
        self._check()
        owner = self._hub.presence.get(client_id)
        if owner is None:
            return False
        return self._hub.deliver(owner.node_id, envelope)

    async def consume_token(self, nonce: str, expires_at: float) -> bool:
        """Mark a nonce used; False if it already was."""
        self._check()
        used = self._hub.used_nonces
        now = time.time()
        if len(used) > 1024:
            for key in [k for k, exp in used.items() if exp <= now]:
                del used[key]
        if nonce in used:
            return False
        used[nonce] = expires_at
        return True

    async def restore_token(self, nonce: str) -> None:
        """Forget that a nonce was used."""
        self._hub.used_nonces.pop(nonce, None)

    async def shared_secret(self) -> bytes:
        """The hub's random key (lives as long as the process)."""
        return self._hub.secret

    async def count(self) -> int:
        """Clients present on any node of the hub."""
        self._check()
        return len(self._hub.presence)

    async def scan(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield every presence entry."""
        self._check()
        for presence in list(self._hub.presence.values()):
            yield presence

    async def locate(self, client_id: str) -> Presence | None:
        """Where `client_id` is connected."""
        self._check()
        return self._hub.presence.get(client_id)

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
        """Refresh this node; reap nodes that stopped refreshing (their clients' sessions
        then run out after `session_ttl`)."""
        self._check()
        hub = self._hub
        now = time.monotonic()
        rejoined = self._node_id not in hub.node_deadlines
        hub.node_deadlines[self._node_id] = now + node_ttl
        reaped = [node for node, deadline in hub.node_deadlines.items() if deadline <= now]
        for node in reaped:
            del hub.node_deadlines[node]
            for client_id in list(hub.node_clients.pop(node, ())):
                current = hub.presence.get(client_id)
                if current is not None and current.node_id == node:
                    del hub.presence[client_id]
                    hub.away[client_id] = time.time() + session_ttl
                    record = hub.sessions.get(client_id)
                    if record is not None:
                        record.until = time.time() + session_ttl
        return Liveness(tuple(reaped), rejoined)

    async def resync(self, local: Sequence[Presence]) -> list[str]:
        """Re-register local presence, forget what this node no longer holds; return ids
        another node holds now."""
        self._check()
        hub = self._hub
        mine = {presence.client_id for presence in local}
        for client_id in list(hub.node_clients.get(self._node_id, ())):
            if client_id not in mine:  # an unregister that failed: forget it now
                current = hub.presence.get(client_id)
                if current is not None and current.node_id == self._node_id:
                    hub.drop_presence(client_id)
                hub.node_clients[self._node_id].discard(client_id)
        lost: list[str] = []
        for presence in local:
            current = self._hub.presence.get(presence.client_id)
            if current is None or current.node_id == presence.node_id:
                self._hub.presence[presence.client_id] = presence
                self._hub.node_clients.setdefault(presence.node_id, set()).add(
                    presence.client_id
                )
            else:
                lost.append(presence.client_id)
        return lost

    async def unregister_node(self) -> None:
        """Remove this node and its presence."""
        hub = self._hub
        for client_id in list(hub.node_clients.pop(self._node_id, ())):
            current = hub.presence.get(client_id)
            if current is not None and current.node_id == self._node_id:
                del hub.presence[client_id]
        hub.node_deadlines.pop(self._node_id, None)

    async def nodes(self) -> list[str]:
        """Nodes that joined the hub and were not reaped."""
        return sorted(self._hub.node_deadlines)

    # ------------------------------------------------------------------ groups

    async def publish_group(self, group: str, envelope: bytes) -> int:
        """Deliver to the other nodes subscribed to `group`."""
        self._check()
        reached = 0
        for node_id in list(self._hub.group_nodes.get(group, ())):
            if node_id != self._node_id and self._hub.deliver(node_id, envelope):
                reached += 1
        return reached

    async def join_group(self, client_id: str, group: str) -> bool:
        """Add a member."""
        self._check()
        hub = self._hub
        members = hub.groups.setdefault(group, set())
        added = client_id not in members
        members.add(client_id)
        hub.client_groups.setdefault(client_id, set()).add(group)
        record = hub.sessions.get(client_id)
        if added and record is not None:
            record.baselines[f"g:{group}"] = hub.position(f"g:{group}", time.time())
        if added:
            self._event("join", client_id, group)
        return added

    async def leave_group(self, client_id: str, group: str) -> bool:
        """Remove a member."""
        self._check()
        members = self._hub.groups.get(group, set())
        removed = client_id in members
        members.discard(client_id)
        if not members:
            self._hub.groups.pop(group, None)
        self._hub.client_groups.get(client_id, set()).discard(group)
        record = self._hub.sessions.get(client_id)
        if record is not None:
            record.baselines.pop(f"g:{group}", None)
        if removed:
            self._event("leave", client_id, group)
        return removed

    async def group_members(self, group: str) -> list[str]:
        """Members of `group`."""
        self._check()
        return sorted(self._hub.groups.get(group, ()))

    async def client_groups(self, client_id: str) -> list[str]:
        """Groups of `client_id`."""
        self._check()
        return sorted(self._hub.client_groups.get(client_id, ()))

    async def subscribe_group(self, group: str) -> None:
        """Receive `group`'s messages on this node."""
        self._hub.group_nodes.setdefault(group, set()).add(self._node_id)

    async def unsubscribe_group(self, group: str) -> None:
        """Stop receiving `group`'s messages on this node."""
        nodes = self._hub.group_nodes.get(group)
        if nodes is not None:
            nodes.discard(self._node_id)
            if not nodes:
                del self._hub.group_nodes[group]

    # ------------------------------------------------------------------ history

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float,
        meta_ttl: float = 0.0,
    ) -> Sequenced:
        """Assign the next offset, append, deliver (to this node too)."""
        self._check()
        hub = self._hub
        now = time.time()
        if target.kind == "client":
            owner = hub.presence.get(target.name)
            if owner is None and hub.session(target.name, now) is None:
                return Sequenced(0, "", 0)
        state = hub.stream(target.stream, now)
        if state is None:
            state = hub.streams[target.stream] = _Stream()
        state.offset += 1
        raw = encode(dataclasses.replace(envelope, offset=state.offset, epoch=state.epoch))
        state.entries.append((state.offset, raw))
        while len(state.entries) > size:
            state.entries.popleft()
        state.entries_until = now + ttl
        state.until = now + max(ttl, meta_ttl)
        if target.kind == "all":
            nodes = list(hub.inboxes)
        elif target.kind == "group":
            nodes = list(hub.group_nodes.get(target.name, ()))
        else:
            owner = hub.presence.get(target.name)
            nodes = [owner.node_id] if owner is not None else []
        reached = sum(1 for node in nodes if hub.deliver(node, raw))
        return Sequenced(state.offset, state.epoch, reached)

    async def history(self, stream: str, after: int, epoch: str) -> History:
        """Entries after `after`, if the stream still holds all of them."""
        self._check()
        state = self._hub.stream(stream, time.time())
        if state is None:
            return History([], True)  # nothing was published since the client left
        if (epoch and state.epoch != epoch) or after > state.offset:
            return History([], False)
        if after == state.offset:
            return History([], True)
        entries = [raw for offset, raw in state.entries if offset > after]
        first = state.entries[0][0] if state.entries else state.offset + 1
        return History(entries, first <= after + 1)

    # ------------------------------------------------------------------ sessions

    async def load_session(self, client_id: str) -> SessionState | None:
        """The session if it is live or still resumable."""
        self._check()
        record = self._hub.session(client_id, time.time())
        if record is None:
            return None
        groups = sorted(self._hub.client_groups.get(client_id, ()))
        return SessionState(groups, dict(record.user_data), dict(record.baselines))

    async def open_session(self, client_id: str, *, fresh: bool) -> None:
        """Create or revive the session; it does not expire while connected."""
        self._check()
        hub = self._hub
        now = time.time()
        record = hub.session(client_id, now)
        if record is None:
            hub.end_session(client_id)
            record = hub.sessions[client_id] = _Session()
        if fresh:
            for stream in ("all", f"c:{client_id}"):
                record.baselines[stream] = hub.position(stream, now)
        record.until = None
        hub.away.pop(client_id, None)

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """Store one user-data value."""
        self._check()
        record = self._hub.sessions.get(client_id)
        if record is not None:
            record.user_data[key] = value

    async def suspend_session(self, client_id: str, ttl: float) -> None:
        """Keep the session `ttl` more seconds."""
        self._check()
        until = time.time() + ttl
        record = self._hub.sessions.get(client_id)
        if record is not None:
            record.until = until
        self._hub.away[client_id] = until

    async def end_session(self, client_id: str) -> list[str]:
        """Drop the session and memberships now."""
        self._check()
        left = self._hub.end_session(client_id)
        for group in left:
            self._event("leave", client_id, group)
        return left

    def _event(self, event: str, client_id: str, group: str) -> None:
        """Tell the other nodes about a membership change (cluster_events)."""
        if not self.events:
            return
        body = json.dumps({"event": event, "client_id": client_id, "group": group,
                           "node_id": self._node_id})
        raw = encode(Envelope(Kind.EVENT, self._node_id, None, body))
        for node_id in list(self._hub.inboxes):
            if node_id != self._node_id:
                self._hub.deliver(node_id, raw)

    async def sweep_sessions(self, limit: int = 100) -> list[str]:
        """End sessions whose time ran out (unless the client came back)."""
        self._check()
        hub = self._hub
        now = time.time()
        due = [cid for cid, until in hub.away.items() if until <= now][:limit]
        ended = []
        for client_id in due:
            hub.away.pop(client_id, None)
            if client_id not in hub.presence:
                hub.end_session(client_id)
                ended.append(client_id)
        return ended
