"""The node-level roles of the in-process backend: presence, routing, tokens, events and
liveness, each a view of one MemoryHub for one node."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence

from stabilizer.backends.base import (
    ORPHAN_GRACE_TTLS,
    Liveness,
    NodeReport,
    Presence,
    Registration,
    Resynced,
    Seat,
    SharedKeys,
    UserLimit,
)
from stabilizer.backends.memory.hub import MemoryHub
from stabilizer.backends.memory.users import check_seat, public, seat_room
from stabilizer.errors import (
    BackendNotReached,
    BackendUnavailable,
    ConnectionLimitExceededError,
)
from stabilizer.pure.streams import session_streams
from stabilizer.pure.users import parse_info
from stabilizer.pure.wire import FRESH, Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent


class MemoryNode:
    """What the roles of one node share: the hub, the node id, open or closed."""

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.node_id = ""
        self.closed = False
        self.events = False
        self.sessions = False  # a membership change names the session's holder
        self.orphan_grace = 20.0  # see RedisCore.orphan_grace_ms (keepalive updates it)
        self.subscribed = asyncio.Event()

    def check(self) -> None:
        """Raise BackendNotReached once the backend is closed."""
        if self.closed:
            raise BackendNotReached("memory backend is closed")

    def tell_others(self, envelope: bytes) -> int:
        """Put `envelope` in every other node's inbox; return how many took it."""
        hub = self.hub
        return sum(1 for node in list(hub.inboxes)
                   if node != self.node_id and hub.deliver(node, envelope))

    def membership_event(self, event: str, client_id: str, group: str) -> None:
        """Tell the other nodes about a join or leave (cluster_events only)."""
        if self.events:
            body = event_body(ClusterEvent(event, client_id, group, self.node_id))
            self.tell_others(encode(Envelope(Kind.EVENT, self.node_id, None, body)))


class MemoryPresence:
    """Presence in the hub; a replaced client's old node gets a KICK in its inbox."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def register(self, presence: Presence, *, max_cluster: int | None,
                       end_groups: bool = False, seat: Seat | None = None,
                       baselines: bool = False, fresh: bool = False,
                       abandoned: Callable[[], None] | None = None) -> Registration:
        """Record presence (and the user's seat); kick a previous socket on another node
        (saying whether the connection is `fresh`);
        with `end_groups`, whatever groups the client had end in the same step; with
        `baselines`, where the client's session streams stand then. (It never awaits: a
        caller cannot give up while it works, so `abandoned` is never called.)"""
        node = self._node
        node.check()
        hub = node.hub
        previous = hub.presence.get(presence.client_id)
        if presence.user_id is not None and seat is not None:
            check_seat(hub, presence, seat)
            presence = dataclasses.replace(presence, info=parse_info(seat.info))
        if previous is None and max_cluster is not None and len(hub.presence) >= max_cluster:
            raise ConnectionLimitExceededError(f"cluster connection limit ({max_cluster}) reached")
        if previous is not None:
            hub.drop_presence(previous.client_id)
            if previous.node_id != presence.node_id:
                kick = Envelope(Kind.KICK, presence.node_id, presence.client_id,
                                FRESH if fresh else None, ref=previous.conn_id)
                hub.deliver(previous.node_id, encode(kick))
        if end_groups:
            for group in hub.leave_groups(presence.client_id, presence.node_id):
                node.membership_event("leave", presence.client_id, group)
        hub.set_presence(presence)
        before = None if previous is None else public(previous)
        now = time.time()
        positions = {stream: hub.position(stream, now) for stream
                     in session_streams(presence.client_id, presence.user_id)
                     } if baselines else None
        return Registration(before, groups_ended=end_groups, positions=positions)

    async def unregister(self, client_id: str, conn_id: str, *,
                         end_groups: bool = False, away: float = 0.0) -> bool:
        """Remove presence if it still names `conn_id` (with `end_groups`, and the client's
        memberships then; with `away`, the client goes on the away list for so long)."""
        node = self._node
        node.check()
        removed = node.hub.drop_presence(client_id, conn_id)
        if removed and away > 0:
            node.hub.away[client_id] = time.time() + away
        if removed and end_groups:
            for group in node.hub.leave_groups(client_id, node.node_id):
                node.membership_event("leave", client_id, group)
        return removed

    @property
    def ends_groups(self) -> bool:
        """Always: the hub changes in one step."""
        return True

    async def count(self) -> int:
        """Clients present on any node of the hub."""
        self._node.check()
        return len(self._node.hub.presence)

    async def scan(self, batch: int = 500) -> AsyncIterator[Presence]:
        """Yield every presence entry."""
        self._node.check()
        for presence in list(self._node.hub.presence.values()):
            yield public(presence)

    async def locate(self, client_id: str) -> Presence | None:
        """Where `client_id` is connected."""
        self._node.check()
        found = self._node.hub.presence.get(client_id)
        return None if found is None else public(found)


class MemoryRouting:
    """Envelopes through the nodes' inboxes."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while deliveries() runs."""
        return self._node.subscribed

    async def deliveries(self) -> AsyncIterator[bytes]:
        """Yield envelopes addressed to this node; raise BackendUnavailable at a cut (its
        inbox overflowed, or cut_subscription), as at a lost Redis subscription."""
        node = self._node
        node.check()
        inbox = node.hub.inboxes[node.node_id]
        node.subscribed.set()
        try:
            while (envelope := await inbox.get()) is not None:
                yield envelope
            raise BackendUnavailable("subscription cut")
        finally:
            node.subscribed.clear()

    async def publish(self, envelope: bytes) -> int:
        """Deliver to every other node's inbox."""
        self._node.check()
        return self._node.tell_others(envelope)

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """Deliver to the node owning `client_id`."""
        self._node.check()
        owner = self._node.hub.presence.get(client_id)
        return owner is not None and self._node.hub.deliver(owner.node_id, envelope)

    async def to_node(self, node_id: str, envelope: bytes) -> bool:
        """Deliver to node `node_id`'s inbox."""
        self._node.check()
        return self._node.hub.deliver(node_id, envelope)


class MemoryTokens:
    """Used nonces and the hub's key (which lives as long as the process)."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    @property
    def known_secret(self) -> bytes:
        """The hub's random key: usable before open()."""
        return self._node.hub.secret

    async def consume(self, nonce: str, until: float) -> bool:
        """Mark a nonce used until wall time `until`; False if it already was."""
        self._node.check()
        used = self._node.hub.used_nonces
        now = time.time()
        if len(used) > 1024:
            for key in [k for k, exp in used.items() if exp <= now]:
                del used[key]
        if nonce in used:
            return False
        used[nonce] = until
        return True

    async def restore(self, nonce: str) -> None:
        """Forget that a nonce was used."""
        self._node.check()
        self._node.hub.used_nonces.pop(nonce, None)

    async def share_keys(self, offer: bytes, held: Mapping[bytes, float]) -> SharedKeys:
        """The hub's key signs (it lives as long as the process: `offer` is never needed);
        `held` joins the hub's keyring, from which keys whose time is over are dropped."""
        self._node.check()
        hub = self._node.hub
        now = time.time()
        for key, until in held.items():
            hub.keyring[key] = max(until, hub.keyring.get(key, 0.0))
        for key in [key for key, until in hub.keyring.items() if until <= now]:
            del hub.keyring[key]
        return SharedKeys(hub.secret, dict(hub.keyring))


class MemoryEvents:
    """Cluster events through the other nodes' inboxes."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def publish(self, event: ClusterEvent) -> None:
        """Tell every other node."""
        self._node.check()
        body = event_body(event)
        self._node.tell_others(encode(Envelope(Kind.EVENT, self._node.node_id, None, body)))


class MemoryLiveness:
    """Node deadlines on the loop's monotonic clock; reaping of nodes that stopped."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
        """Refresh this node; reap nodes that stopped refreshing (their clients' sessions
        then run out after `session_ttl`)."""
        self._node.check()
        hub = self._node.hub
        me = self._node.node_id
        self._node.orphan_grace = node_ttl * ORPHAN_GRACE_TTLS
        now = time.monotonic()
        rejoined = me not in hub.node_deadlines
        hub.node_deadlines[me] = now + node_ttl
        reaped = [node for node, deadline in hub.node_deadlines.items() if deadline <= now]
        until = time.time() + session_ttl  # one deadline: one sweep ends them all
        for node in reaped:
            del hub.node_deadlines[node]
            hub.node_reports.pop(node, None)
            for client_id in list(hub.node_clients.pop(node, ())):
                self._forget(client_id, node, until)
        return Liveness(tuple(reaped), rejoined)

    async def incarnation(self) -> str | None:
        """Always the same: the in-process store loses nothing while the process runs."""
        self._node.check()
        return "memory"

    def _forget(self, client_id: str, node: str, until: float) -> bool:
        """Drop the client's presence if it names `node`; its session (and groups) then
        end at `until` (time.time()) unless it comes back."""
        hub = self._node.hub
        current = hub.presence.get(client_id)
        if current is None or current.node_id != node:
            return False
        hub.drop_presence(client_id)
        hub.away[client_id] = until
        record = hub.sessions.get(client_id)
        if record is not None:
            record.until = until
        return True

    async def forget_predecessor(self, session_ttl: float = 0.0) -> int:
        """End what an earlier node under this node id left, as reaping does; return how
        many presence entries it removed."""
        self._node.check()
        me = self._node.node_id
        clients = self._node.hub.node_clients.get(me, set())
        until = time.time() + session_ttl
        removed = sum(1 for client_id in list(clients) if self._forget(client_id, me, until))
        clients.clear()
        return removed

    async def resync(self, local: Sequence[Presence], *, claims: Collection[str] = (),
                     session_ttl: float = 0.0, listed_at: float | None = None,
                     user_limit: UserLimit | None = None) -> Resynced:
        """Re-register local presence, oldest first (a claiming connection that is newer
        takes its client over; the other node's older socket is kicked; with `user_limit`
        a connection past it gets no seat, or takes a newer connection's), forget what this
        node no longer holds (but connections made at or after `listed_at`); return ids
        another node keeps and connections past the limit."""
        self._node.check()
        hub = self._node.hub
        me = self._node.node_id
        mine = {presence.client_id for presence in local}
        for client_id in list(hub.node_clients.get(me, ())):
            current = hub.presence.get(client_id)
            if client_id in mine or (current is not None and current.node_id == me and
                                     listed_at is not None and current.since >= listed_at):
                continue  # listed, or admitted while the caller listed its connections
            self._forget(client_id, me, time.time() + session_ttl)  # a failed unregister, or older
            hub.node_clients[me].discard(client_id)
        lost: list[str] = []
        over: dict[tuple[str, str], None] = {}
        for presence in sorted(local, key=lambda p: (p.since, p.client_id)):
            current = hub.presence.get(presence.client_id)
            if current is not None and current.node_id == me and (
                    current.conn_id != presence.conn_id and current.since > presence.since):
                continue  # a newer connection of this node holds it now
            elsewhere = current if current is not None and current.node_id != me else None
            if elsewhere is not None and (presence.client_id not in claims or
                                          presence.since <= elsewhere.since):
                lost.append(presence.client_id)
                continue
            if (user_limit is not None and presence.conn_id not in user_limit.seated
                    and not seat_room(hub, me, presence, user_limit, over)):
                over[(presence.client_id, presence.conn_id)] = None
                if current is not None and elsewhere is None and (
                        current.conn_id != presence.conn_id):  # one it replaced here
                    hub.drop_presence(current.client_id, current.conn_id)
                continue
            if elsewhere is not None:  # ours is newer: take the client over
                hub.drop_presence(elsewhere.client_id)
                kick = Envelope(Kind.KICK, me, elsewhere.client_id, ref=elsewhere.conn_id)
                hub.deliver(elsewhere.node_id, encode(kick))
            hub.set_presence(presence)
        return Resynced(tuple(lost), tuple(over))

    async def unregister_node(self) -> None:
        """Remove this node and its presence."""
        self._node.check()
        hub = self._node.hub
        me = self._node.node_id
        for client_id in list(hub.node_clients.get(me, ())):
            current = hub.presence.get(client_id)
            if current is not None and current.node_id == me:
                hub.drop_presence(client_id)
        hub.node_clients.pop(me, None)
        hub.node_deadlines.pop(me, None)
        hub.node_reports.pop(me, None)

    async def nodes(self) -> list[str]:
        """Nodes that joined the hub and were not reaped."""
        self._node.check()
        return sorted(self._node.hub.node_deadlines)

    async def report(self, report: NodeReport) -> None:
        """Keep this node's report in the hub."""
        self._node.check()
        self._node.hub.node_reports[self._node.node_id] = report

    async def reports(self) -> list[NodeReport]:
        """Every report in the hub, by node id."""
        self._node.check()
        return [report for _, report in sorted(self._node.hub.node_reports.items())]
