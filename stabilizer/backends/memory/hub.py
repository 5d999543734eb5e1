"""The state the memory backends of one process share: presence, users, groups, streams,
sessions, tokens, node liveness and one inbox per node.

Several managers may share one MemoryHub in the same event loop; they then behave as nodes
of one cluster, which is how the backend contract tests run the same scenarios on memory and
on Redis. Without a hub argument every backend gets a private hub, i.e. a single node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator

from stabilizer.backends.base import NodeReport, Presence
from stabilizer.pure.wire import Envelope, Kind, encode

logger = logging.getLogger(__name__)


class StreamRecord:
    """One history stream: epoch, last offset, bounded entries, expiry times."""

    __slots__ = ("entries", "entries_until", "epoch", "offset", "until")

    def __init__(self) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.entries: deque[tuple[int, bytes]] = deque()
        self.entries_until = 0.0
        self.until = 0.0


class SessionRecord:
    __slots__ = ("baselines", "holder", "until", "user_data")

    def __init__(self) -> None:
        self.user_data: dict[str, bytes] = {}
        self.baselines: dict[str, tuple[int, str]] = {}
        self.until: float | None = None
        self.holder = ""  # the conn id that opened or resumed it last ("" none)


class MemoryHub:
    """State shared by the memory backends of one process (one event loop)."""

    def __init__(self) -> None:
        self.groups: dict[str, set[str]] = {}
        self.group_presence: dict[str, dict[str, str]] = {}  # group -> client -> entry
        self.presence_versions: dict[str, int] = {}  # while the group has presence
        self.client_groups: dict[str, set[str]] = {}
        self.group_nodes: dict[str, set[str]] = {}
        self.streams: dict[str, StreamRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.away: dict[str, float] = {}
        self.presence: dict[str, Presence] = {}
        self.users: dict[str, dict[str, Presence]] = {}  # user -> client -> presence
        self.node_clients: dict[str, set[str]] = {}
        self.node_deadlines: dict[str, float] = {}
        self.node_reports: dict[str, NodeReport] = {}
        # None in an inbox stands for a lost subscription (cut_subscription)
        self.inboxes: dict[str, asyncio.Queue[bytes | None]] = {}
        self.used_nonces: dict[str, float] = {}
        self.secret = secrets.token_bytes(32)
        self.keyring: dict[bytes, float] = {}  # key -> time.time() it verifies until
        self.dropped = 0
        # while a batch is open: group -> the (version, old, new) changes it collected
        self._presence_batch: dict[str, list[tuple[int, str | None, str | None]]] | None = None

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

    def cut_subscription(self, node_id: str) -> bool:
        """Make `node_id`'s deliveries() fail as a lost Redis subscription would (what was
        delivered to it until then stays queued); False when its inbox is missing or full."""
        inbox = self.inboxes.get(node_id)
        if inbox is None or inbox.full():
            return False
        inbox.put_nowait(None)
        return True

    def stream(self, name: str, now: float) -> StreamRecord | None:
        """The live state of a stream, forgetting it once its time ran out."""
        state = self.streams.get(name)
        if state is not None and state.until <= now:
            del self.streams[name]
            return None
        if state is not None and state.entries_until <= now:
            state.entries.clear()
        return state

    def session(self, client_id: str, now: float) -> SessionRecord | None:
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
        return self.leave_groups(client_id)

    def set_group_presence(self, group: str, client_id: str, entry: str | None,
                           origin: str) -> None:
        """Set (or with None remove) a member's presence entry; when it changed, bump the
        group's version and deliver the change to every node following the group (as
        PRESENCE_LIB does in Redis: versions start at the clock in microseconds)."""
        entries = self.group_presence.get(group, {})
        old = entries.get(client_id)
        if old == entry:
            return
        if entry is None:
            del entries[client_id]
        else:
            entries[client_id] = entry
            self.group_presence[group] = entries
        version = self.presence_versions.get(group)
        version = int(time.time() * 1_000_000) if version is None else version + 1
        if entries:
            self.presence_versions[group] = version
        else:
            self.group_presence.pop(group, None)
            self.presence_versions.pop(group, None)
        if self._presence_batch is not None:
            self._presence_batch.setdefault(group, []).append((version, old, entry))
            return
        payload = f"[{old or 'null'},{entry or 'null'}]"
        self._deliver_presence(group, payload, version, origin)

    def _deliver_presence(self, group: str, payload: str, version: int, origin: str) -> None:
        raw = encode(Envelope(Kind.PRESENCE, origin, group, payload, ref=str(version)))
        for node in list(self.group_nodes.get(group, ())):
            self.deliver(node, raw)

    @contextlib.contextmanager
    def presence_batch(self, origin: str = "memory") -> Iterator[None]:
        """Collect the presence changes made inside into one envelope per group, delivered
        at the end (as a Redis SWEEP does): their followers get them in one diff."""
        self._presence_batch = {}
        try:
            yield
        finally:
            batch, self._presence_batch = self._presence_batch, None
            for group, changes in batch.items():
                payload = ",".join(f"[{version},{old or 'null'},{new or 'null'}]"
                                   for version, old, new in changes)
                self._deliver_presence(group, f"[{payload}]", changes[-1][0], origin)

    def leave_groups(self, client_id: str, origin: str = "memory") -> list[str]:
        """Drop every group membership of a client (and its presence entries); return the
        groups left."""
        left = sorted(self.client_groups.pop(client_id, set()))
        for group in left:
            self.set_group_presence(group, client_id, None, origin)
            members = self.groups.get(group)
            if members is not None:
                members.discard(client_id)
                if not members:
                    del self.groups[group]
        return left

    def set_presence(self, presence: Presence) -> None:
        """Record a client's presence (replacing any other), and its user's seat."""
        self.drop_presence(presence.client_id)
        self.presence[presence.client_id] = presence
        self.node_clients.setdefault(presence.node_id, set()).add(presence.client_id)
        if presence.user_id is not None:
            self.users.setdefault(presence.user_id, {})[presence.client_id] = presence

    def drop_presence(self, client_id: str, conn_id: str | None = None) -> bool:
        """Remove a client's presence and seat (only if it names `conn_id`, when given)."""
        current = self.presence.get(client_id)
        if current is None or (conn_id is not None and current.conn_id != conn_id):
            return False
        del self.presence[client_id]
        owned = self.node_clients.get(current.node_id)
        if owned is not None:
            owned.discard(client_id)
        if current.user_id is not None:
            seats = self.users.get(current.user_id)
            if seats is not None:
                seats.pop(client_id, None)
                if not seats:
                    del self.users[current.user_id]
        return True


