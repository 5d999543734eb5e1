"""The stream-level roles of the in-process backend: groups, history and sessions."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import AsyncGenerator, Collection, Iterable, Mapping, Sequence

from stabilizer.backends.base import (
    History,
    MembershipChange,
    Sequenced,
    SessionGone,
    SessionState,
    SessionTaken,
)
from stabilizer.backends.memory.hub import SessionRecord
from stabilizer.backends.memory.nodes import MemoryNode
from stabilizer.backends.memory.users import to_user
from stabilizer.pure.streams import ALL, Target, client_stream, group_stream, user_stream
from stabilizer.pure.wire import Envelope, encode


class MemoryGroups:
    """Group membership and which nodes follow each group."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    @property
    def change_round_trips(self) -> int:
        """One step (no network: the bound only catches a stalled loop)."""
        return 1

    @property
    def route_round_trips(self) -> int:
        """One step."""
        return 1

    async def publish(self, group: str, envelope: bytes) -> int:
        """Deliver to the other nodes subscribed to `group`."""
        node = self._node
        node.check()
        return sum(1 for other in list(node.hub.group_nodes.get(group, ()))
                   if other != node.node_id and node.hub.deliver(other, envelope))

    def _holder(self, client_id: str) -> str | None:
        """The connection that holds the client's memberships: its session's, with
        sessions, else the one presence names ("" none; None when the store does not know
        the client at all)."""
        hub = self._node.hub
        if self._node.sessions:
            record = hub.session(client_id, time.time())
            return None if record is None else record.holder
        presence = hub.presence.get(client_id)
        return None if presence is None else presence.conn_id

    def _await_claim(self, client_id: str) -> None:
        """A client the store does not know got a membership: on the away list (unless
        it is already), so the sweep ends it if nobody registers the client in time."""
        self._node.hub.away.setdefault(client_id, time.time() + self._node.orphan_grace)

    async def join(self, client_id: str, group: str,
                   presence: str | None = None) -> MembershipChange:
        """Add a member (with its presence entry, when there is one)."""
        self._node.check()
        hub = self._node.hub
        members = hub.groups.setdefault(group, set())
        added = client_id not in members
        members.add(client_id)
        hub.client_groups.setdefault(client_id, set()).add(group)
        if presence is not None:
            hub.set_group_presence(group, client_id, presence, self._node.node_id)
        record = hub.sessions.get(client_id)
        if added:
            if record is not None:
                stream = group_stream(group)
                record.baselines[stream] = hub.position(stream, time.time())
            self._node.membership_event("join", client_id, group)
        holder = self._holder(client_id)
        if holder is None:
            self._await_claim(client_id)
        return MembershipChange(added, holder or "")

    async def leave(self, client_id: str, group: str) -> MembershipChange:
        """Remove a member."""
        self._node.check()
        hub = self._node.hub
        members = hub.groups.get(group, set())
        removed = client_id in members
        members.discard(client_id)
        if not members:
            hub.groups.pop(group, None)
        hub.client_groups.get(client_id, set()).discard(group)
        hub.set_group_presence(group, client_id, None, self._node.node_id)
        record = hub.sessions.get(client_id)
        if record is not None:
            record.baselines.pop(group_stream(group), None)
        if removed:
            self._node.membership_event("leave", client_id, group)
        return MembershipChange(removed, self._holder(client_id) or "")

    async def update_presence(self, client_id: str, group: str, presence: str) -> bool:
        """Set a member's presence entry; False when the client is not a member."""
        self._node.check()
        hub = self._node.hub
        if client_id not in hub.groups.get(group, ()):
            return False
        hub.set_group_presence(group, client_id, presence, self._node.node_id)
        return True

    async def presence_state(self, group: str) -> tuple[int, dict[str, str]]:
        """The group's presence version (0: none) and entries."""
        self._node.check()
        hub = self._node.hub
        return hub.presence_versions.get(group, 0), dict(hub.group_presence.get(group, {}))

    async def count_presence(self, group: str) -> int:
        """How many members of the group have a presence entry."""
        self._node.check()
        return len(self._node.hub.group_presence.get(group, ()))

    async def route_change(self, client_id: str, group: str, *, member: bool,
                           envelope: bytes) -> bool:
        """Deliver to the node owning `client_id` if the change still stands."""
        self._node.check()
        hub = self._node.hub
        owner = hub.presence.get(client_id)
        if owner is None or (group in hub.client_groups.get(client_id, ())) != member:
            return False
        return hub.deliver(owner.node_id, envelope)

    async def members(self, group: str) -> list[str]:
        """Members of `group`."""
        self._node.check()
        return sorted(self._node.hub.groups.get(group, ()))

    async def count_members(self, groups: Sequence[str]) -> dict[str, int]:
        """How many members each of `groups` has."""
        self._node.check()
        members = self._node.hub.groups
        return {group: len(members.get(group, ())) for group in groups}

    async def of_client(self, client_id: str) -> list[str]:
        """Groups of `client_id`."""
        self._node.check()
        return sorted(self._node.hub.client_groups.get(client_id, ()))

    async def reconcile(self, local: Mapping[str, Collection[str]], *,
                        restore: bool = False,
                        presence: Mapping[str, Mapping[str, str]] | None = None,
                        opened: Mapping[str, float] | None = None,
                        ) -> dict[str, list[str]]:
        """Groups of each client of `local`, after adding it back to its local groups
        with `restore` (no events, no baselines; the missing presence entries `presence`
        gives, published), unless a connection on another node opened no earlier than
        this node's (`opened`) holds it."""
        self._node.check()
        hub = self._node.hub
        if restore:
            for client_id, groups in local.items():
                held = hub.presence.get(client_id)
                mine = (opened or {}).get(client_id)
                if (held is not None and mine is not None
                        and held.node_id != self._node.node_id and held.since >= mine):
                    continue
                entries = (presence or {}).get(client_id, {})
                for group in groups:
                    hub.groups.setdefault(group, set()).add(client_id)
                    hub.client_groups.setdefault(client_id, set()).add(group)
                    entry = entries.get(group)
                    if entry is not None and client_id not in hub.group_presence.get(group, {}):
                        hub.set_group_presence(group, client_id, entry, self._node.node_id)
                if groups:  # its presence is registered next (see RECONCILE_GROUPS)
                    self._await_claim(client_id)
        return {client_id: sorted(hub.client_groups.get(client_id, ())) for client_id in local}

    async def unlist_returned(self, local: Mapping[str, Collection[str]],
                              ) -> AsyncGenerator[int, None]:
        """Nothing to take out: the hub keeps both sides of a membership together."""
        for _ in ():
            yield 0

    async def presence_entries(self, client_id: str,
                               groups: Collection[str]) -> dict[str, str]:
        """The client's presence entries in `groups`, where it has one."""
        self._node.check()
        hub = self._node.hub
        return {group: entry for group in groups
                if (entry := hub.group_presence.get(group, {}).get(client_id)) is not None}

    async def subscribe(self, group: str) -> None:
        """Receive `group`'s messages on this node."""
        self._node.hub.group_nodes.setdefault(group, set()).add(self._node.node_id)

    async def unsubscribe(self, group: str) -> None:
        """Stop receiving `group`'s messages on this node."""
        nodes = self._node.hub.group_nodes.get(group)
        if nodes is not None:
            nodes.discard(self._node.node_id)
            if not nodes:
                del self._node.hub.group_nodes[group]


class MemoryHistory:
    """Bounded streams with offsets and epochs."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float, meta_ttl: float
    ) -> Sequenced:
        """Assign the next offset, append, deliver (to this node too)."""
        self._node.check()
        hub = self._node.hub
        now = time.time()
        owner = hub.presence.get(target.name) if target.kind == "client" else None
        if target.kind == "client" and owner is None and hub.session(target.name, now) is None:
            return Sequenced(0, "", 0)
        until = now + max(ttl, meta_ttl)
        state = hub.stream(target.stream, now)
        if state is None:
            state = hub.new_stream(target.stream, now + ttl, until)
        state.offset += 1
        raw = encode(dataclasses.replace(envelope, offset=state.offset, epoch=state.epoch))
        state.entries.append((state.offset, raw))
        while len(state.entries) > size:
            state.entries.popleft()
        state.entries_until, state.until = now + ttl, until  # (the sweep: expire_streams)
        hub.appended(target.stream, state)
        if target.kind == "user":
            clients = to_user(hub, target.name, raw, kept=True)
            return Sequenced(state.offset, state.epoch, len(clients), tuple(clients))
        if target.kind == "all":
            nodes = list(hub.inboxes)
        elif target.kind == "group":
            nodes = list(hub.group_nodes.get(target.name, ()))
        else:
            nodes = [owner.node_id] if owner is not None else []
        reached = sum(1 for node in nodes if hub.deliver_kept(node, raw))
        return Sequenced(state.offset, state.epoch, reached)

    async def read(self, stream: str, after: int, epoch: str, *, max_entries: int = 0,
                   max_bytes: int = 0) -> History:
        """Entries after `after`, if the stream still holds all of them (a page of them,
        bounded as Redis bounds it)."""
        self._node.check()
        state = self._node.hub.stream(stream, time.time())
        if state is None:  # expired (nothing was published since) or lost
            return History([], True, absent=True)
        if epoch and state.epoch != epoch:
            return History([], False, state.epoch)
        if after > state.offset:
            return History([], False)
        if after == state.offset:
            return History([], True, last=state.offset)
        first = state.entries[0][0] if state.entries else state.offset + 1
        if first > after + 1:
            return History([], False)
        # (the offsets it holds follow each other: the one after `after` is at after + 1 - first)
        entries = itertools.islice(state.entries, after + 1 - first, None)
        return History(_page(entries, max_entries, max_bytes), True, last=state.offset)


def _page(entries: Iterable[tuple[int, bytes]], max_entries: int, max_bytes: int,
          ) -> list[bytes]:
    """The envelopes of `entries` a page holds: at most `max_entries`, and no more than
    `max_bytes` bytes but for the first (0: no bound)."""
    page: list[bytes] = []
    size = 0
    for _, raw in entries:
        if page and ((max_entries and len(page) >= max_entries)
                     or (max_bytes and size + len(raw) > max_bytes)):
            break
        page.append(raw)
        size += len(raw)
    return page


class MemorySessions:
    """Session records, the away list and their sweep."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def load(self, client_id: str) -> SessionState | None:
        """The session if it is live or still resumable."""
        self._node.check()
        hub = self._node.hub
        record = hub.session(client_id, time.time())
        if record is None:
            return None
        groups = sorted(hub.client_groups.get(client_id, ()))
        return SessionState(groups, dict(record.user_data), dict(record.baselines))

    async def activate(self, client_id: str, *, fresh: bool, user_id: str | None = None,
                       conn_id: str | None = None,
                       since: Mapping[str, tuple[int, str]] | None = None,
                       ) -> dict[str, tuple[int, str]]:
        """Create or revive the session, held by `conn_id`; it does not expire while
        connected. Return the baselines a fresh one records (SessionTaken, SessionGone: see
        SessionStore)."""
        self._node.check()
        if self._owned_elsewhere(client_id, conn_id):
            raise SessionTaken(client_id)
        hub = self._node.hub
        now = time.time()
        record = None if fresh else hub.session(client_id, now)
        if record is None:
            if not fresh:  # it ended (or its time ran out) since the resume loaded it
                raise SessionGone(client_id)
            self._end(client_id)
            record = hub.sessions[client_id] = SessionRecord()
        baselines: dict[str, tuple[int, str]] = {}
        if fresh:
            streams = [ALL, client_stream(client_id)]
            if user_id is not None:
                streams.append(user_stream(user_id))
            for stream in streams:
                at = since.get(stream) if since is not None else None
                baselines[stream] = record.baselines[stream] = at or hub.position(stream, now)
        record.until = None
        record.holder = conn_id or ""
        hub.away.pop(client_id, None)
        return baselines

    async def held(self, client_id: str, conn_id: str) -> bool:
        """Whether the session exists and `conn_id` holds it."""
        self._node.check()
        record = self._node.hub.session(client_id, time.time())
        return record is not None and record.holder == conn_id

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """Store one user-data value."""
        self._node.check()
        record = self._node.hub.sessions.get(client_id)
        if record is not None:
            record.user_data[key] = value

    async def suspend(self, client_id: str, ttl: float, *, conn_id: str | None = None) -> None:
        """Keep the session `ttl` more seconds (unless another connection owns it)."""
        self._node.check()
        if self._owned_elsewhere(client_id, conn_id):
            return
        until = time.time() + ttl
        record = self._node.hub.sessions.get(client_id)
        if record is not None:
            record.until = until
        self._node.hub.away[client_id] = until

    async def end(self, client_id: str, *, conn_id: str | None = None,
                  opening: bool = False) -> list[str]:
        """Drop the session and memberships now (unless another connection owns them).
        (`opening` changes nothing here: a sweep is one step.)"""
        self._node.check()
        if self._owned_elsewhere(client_id, conn_id):
            return []
        return self._end(client_id)

    def _owned_elsewhere(self, client_id: str, conn_id: str | None) -> bool:
        """A newer connection of the client than the closing `conn_id` holds its presence."""
        current = self._node.hub.presence.get(client_id)
        return conn_id is not None and current is not None and current.conn_id != conn_id

    def _end(self, client_id: str) -> list[str]:
        left = self._node.hub.end_session(client_id)
        for group in left:
            self._node.membership_event("leave", client_id, group)
        return left

    async def sweep(self, limit: int = 100) -> list[str]:
        """End sessions whose time ran out (unless the client came back); forget the
        streams whose time ran out (and the entries of those whose entries' did), as
        Redis expires their keys."""
        self._node.check()
        hub = self._node.hub
        now = time.time()
        hub.expire_streams(now)
        due = [cid for cid, until in hub.away.items() if until <= now][:limit]
        ended = []
        with hub.presence_batch():  # their members leave in one diff per group
            for client_id in due:
                hub.away.pop(client_id, None)
                if client_id not in hub.presence:
                    self._end(client_id)
                    ended.append(client_id)
        return ended
