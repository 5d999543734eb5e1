"""The state the memory backends of one process share: presence, users, groups, streams,
sessions, tokens, node liveness and one inbox per node.

An inbox holds at most its limit: an envelope that finds it full is never dropped silently.
The inbox is cut then, as Redis cuts a subscriber whose output buffer overflows: its node
resubscribes, catches up every stream it follows from history (or tells its clients to
resync) and reads the presence state of the groups it follows again, as after any lost
subscription; until it took the cut, what finds the inbox full is dropped (with history,
the catch-up delivers it; without, delivery is at-most-once, as on Redis).

Streams are forgotten when their time runs out, whether or not anyone reads them: the
maintenance sweep (MemorySessions.sweep) takes them from a heap of deadlines, one entry
per stream.

Several managers may share one MemoryHub in the same event loop; they then behave as nodes
of one cluster, which is how the backend contract tests run the same scenarios on memory and
on Redis. Without a hub argument every backend gets a private hub, i.e. a single node.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator

from stabilizer.backends.base import NodeReport, Presence
from stabilizer.pure.wire import Envelope, Kind, encode

logger = logging.getLogger(__name__)


class StreamRecord:
    """One history stream: epoch, last offset, bounded entries, expiry times (the entries'
    never after the stream's)."""

    __slots__ = ("entries", "entries_until", "epoch", "offset", "scheduled", "serial",
                 "until")

    def __init__(self, serial: int = 0) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.entries: deque[tuple[int, bytes]] = deque()
        self.entries_until = 0.0
        self.until = 0.0
        self.serial = serial  # tells this record's deadline from an earlier one's of its name
        self.scheduled = 0.0  # the time of its one live entry in the hub's deadlines

    def due(self) -> float:
        """When something of it runs out next: its entries (while it holds some), or it."""
        return self.entries_until if self.entries else self.until


class Inbox:
    """A node's envelopes, in order: at most `limit` queued, then a cut (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # (the bound: offer's)
        self.cut_pending = False  # a None is queued that the node has not taken yet

    def qsize(self) -> int:
        """How many envelopes (and cuts) are queued."""
        return self._queue.qsize()

    def offer(self, envelope: bytes) -> bool:
        """Queue `envelope` if there is room; False (nothing queued) if not."""
        if self._queue.qsize() >= self.limit:
            return False
        self._queue.put_nowait(envelope)
        return True

    def cut(self) -> bool:
        """Queue a cut after what is queued (one over the limit at most: one at a time);
        False when one is queued already."""
        if self.cut_pending:
            return False
        self.cut_pending = True
        self._queue.put_nowait(None)
        return True

    async def get(self) -> bytes | None:
        """The next envelope; None for a cut (the node resubscribes)."""
        envelope = await self._queue.get()
        if envelope is None:
            self.cut_pending = False
        return envelope


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
        # (when something of the stream runs out, its record's serial, its name): one entry
        # per record, taken by expire_streams
        self._deadlines: list[tuple[float, int, str]] = []
        self._serials = itertools.count(1)
        self.sessions: dict[str, SessionRecord] = {}
        self.away: dict[str, float] = {}
        self.presence: dict[str, Presence] = {}
        self.users: dict[str, dict[str, Presence]] = {}  # user -> client -> presence
        self.node_clients: dict[str, set[str]] = {}
        self.node_deadlines: dict[str, float] = {}
        self.node_reports: dict[str, NodeReport] = {}
        # a cut in an inbox stands for a lost subscription (cut_subscription, a full inbox)
        self.inboxes: dict[str, Inbox] = {}
        self.used_nonces: dict[str, float] = {}
        self.secret = secrets.token_bytes(32)
        self.keyring: dict[bytes, float] = {}  # key -> time.time() it verifies until
        self.dropped = 0  # envelopes that found their inbox full
        # while a batch is open: group -> the (version, old, new) changes it collected
        self._presence_batch: dict[str, list[tuple[int, str | None, str | None]]] | None = None

    def deliver(self, node_id: str, envelope: bytes) -> bool:
        """Put an envelope in a node's inbox; False when the node has none, or when the
        inbox is full: then the envelope is dropped (counted) and the inbox cut, so that
        the node recovers what it lost as after a lost subscription."""
        inbox = self.inboxes.get(node_id)
        if inbox is None:
            return False
        if inbox.offer(envelope):
            return True
        self.dropped += 1
        if inbox.cut():
            logger.warning("memory inbox of node %s is full (%d envelopes): its subscription "
                           "is cut; it catches up from history and reads presence again",
                           node_id, inbox.limit)
        return False

    def deliver_kept(self, node_id: str, envelope: bytes) -> bool:
        """deliver() an envelope kept in a stream: one that found the inbox full counts as
        delivered too, since the node's catch-up reads it from the stream (as a Redis
        PUBLISH counts a subscriber whose output buffer then overflows)."""
        if self.deliver(node_id, envelope):
            return True
        inbox = self.inboxes.get(node_id)
        return inbox is not None and inbox.cut_pending

    def cut_subscription(self, node_id: str) -> bool:
        """Make `node_id`'s deliveries() fail as a lost Redis subscription would (what was
        delivered to it until then stays queued; a cut not taken yet serves); False when
        it has no inbox."""
        inbox = self.inboxes.get(node_id)
        if inbox is None:
            return False
        inbox.cut()
        return True

    def new_stream(self, name: str, entries_until: float, until: float) -> StreamRecord:
        """Begin stream `name` for the message about to be appended, kept until `until` (its
        entries until `entries_until`, the sooner): expire_streams forgets them then, unless
        later messages moved them."""
        state = self.streams[name] = StreamRecord(next(self._serials))
        state.entries_until, state.until = entries_until, until
        self._schedule(name, state)
        return state

    def appended(self, name: str, state: StreamRecord) -> None:
        """`state` (stream `name`) took a message: its times moved on. Entries that came back
        after a quiet spell (its deadline then waits for the stream's own time) bring their
        earlier deadline back; later times need nothing (a deadline taken early is put back)."""
        if state.due() < state.scheduled:
            self._schedule(name, state)

    def _schedule(self, name: str, state: StreamRecord) -> None:
        state.scheduled = state.due()
        heapq.heappush(self._deadlines, (state.scheduled, state.serial, name))

    def expire_streams(self, now: float, limit: int = 10_000) -> int:
        """Forget the streams whose time ran out and the entries of those whose entries'
        did (at most `limit` deadlines taken, earliest first; O(log n) each); return how
        many were taken. A deadline a later message moved is put back, moved."""
        deadlines = self._deadlines
        taken = 0
        while deadlines and deadlines[0][0] <= now and taken < limit:
            when, serial, name = heapq.heappop(deadlines)
            taken += 1
            state = self.streams.get(name)
            if state is None or state.serial != serial or state.scheduled != when:
                continue  # forgotten already (read after it expired, or lost), or moved
            if state.until <= now:
                del self.streams[name]
                continue
            if state.entries_until <= now:
                state.entries.clear()
            self._schedule(name, state)
        return taken

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


