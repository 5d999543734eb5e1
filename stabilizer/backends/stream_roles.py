"""The stream-level roles of a backend: group membership, sequenced history and resumable
sessions (re-exported by ``stabilizer.backends.base`` with the other roles)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Final, Protocol

from stabilizer.backends.records import History, MembershipChange, Sequenced, SessionState
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope

__all__ = ["UNLIST_ROUND_TRIPS", "GroupStore", "HistoryStore", "SessionStore"]

#: Round trips one step of GroupStore.unlist_returned takes at most: a SCAN of each master,
#: the sizes and the members of the group sets it found, then the clients' own sets, the
#: leaves, the clients' sets again and the memberships a join listed meanwhile.
UNLIST_ROUND_TRIPS: Final = 7


class GroupStore(Protocol):
    """Cluster-wide group membership, and the group channels nodes subscribe to."""

    @property
    def change_round_trips(self) -> int:
        """At most how many round trips, one after another, a join or a leave takes in this
        store's layout (known before it opens): the budget every caller gives one, a node's
        services and an emitter alike."""
        ...

    @property
    def route_round_trips(self) -> int:
        """The same for route_change."""
        ...

    async def publish(self, group: str, envelope: bytes) -> int:
        """Hand `envelope` to the other nodes with local members of `group`; return how
        many."""
        ...

    async def join(self, client_id: str, group: str,
                   presence: str | None = None) -> MembershipChange:
        """Add a member (recording the group stream's baseline in the client's session, if
        it has one); ``changed`` is False if it already was a member. The change names the
        connection that held the client's memberships as it was written. A client the
        store does not know (no session, or no presence) goes on the away list for twice
        the last keepalive's node_ttl, unless already there: the sweep ends the membership
        if no node registers the client meanwhile (its node died after the store lost it).
        With `presence` (an entry, pure/presence.py), the member's presence entry in the
        group is set in the same step, and the change published to the nodes following the
        group, as every later change of it (updates; its removal by any end of the
        membership: a leave, a replaced or ended session, a sweep)."""
        ...

    async def update_presence(self, client_id: str, group: str, presence: str) -> bool:
        """Set a member's presence entry (publishing the change); False when the client is
        not a member of `group`."""
        ...

    async def presence_state(self, group: str) -> tuple[int, dict[str, str]]:
        """Return the version of the group's last presence change (0: it has no presence)
        and its entries by client id, read in one step: every published change with a
        higher version happened after."""
        ...

    async def count_presence(self, group: str) -> int:
        """Return how many members of `group` have a presence entry (O(1))."""
        ...

    async def leave(self, client_id: str, group: str) -> MembershipChange:
        """Remove a member (and its presence entry); ``changed`` is False if it was not one.
        The change names the
        connection that held the client's memberships as it was written."""
        ...

    async def route_change(self, client_id: str, group: str, *, member: bool,
                           envelope: bytes) -> bool:
        """Hand a MEMBERSHIP `envelope` to the node owning `client_id` while the store
        still lists the client in `group` exactly when `member` says so, checked in the same
        step (where presence shares the group keys' slot; with presence in other slots it
        is handed over unchecked). False when no node owns the client, or the change was
        undone since it was written: then there is nothing to carry out."""
        ...

    async def members(self, group: str) -> list[str]:
        """Return the members of `group` on every node."""
        ...

    async def count_members(self, groups: Sequence[str]) -> dict[str, int]:
        """Return how many members each of `groups` has on every node (as members lists
        them), in one batched read; a group without members counts 0."""
        ...

    async def of_client(self, client_id: str) -> list[str]:
        """Return the groups `client_id` belongs to."""
        ...

    async def reconcile(self, local: Mapping[str, Collection[str]], *,
                        restore: bool = False,
                        presence: Mapping[str, Mapping[str, str]] | None = None,
                        opened: Mapping[str, float] | None = None,
                        ) -> dict[str, list[str]]:
        """Return the groups each client of `local` belongs to, for many clients at once
        (a round trip per few hundred). With `restore` (the store lost this node's state:
        it restarted empty, or reaped the node), each client first becomes a member of
        the groups `local` lists for it, atomically per batch, without events or stream
        baselines (the memberships were not new, only forgotten), and goes on the away list
        as a join of an unknown client does, until this node registers it again. In the
        same step, each of those memberships that `presence` gives an entry for (client id
        -> group -> entry text) and that has none in the store gets it back, published as
        any presence change is (a join to the group's followers); an entry the store still
        has stays as it is. A client `opened` names (client id -> when this node's
        connection of it opened) gets nothing back while presence places it on another
        node through a connection opened at that time or later: that connection holds the
        client now, with the memberships the store lists for it (the resync that follows
        closes the local one, as it would not claim the client)."""
        ...

    def unlist_returned(self, local: Mapping[str, Collection[str]],
                        ) -> AsyncGenerator[int, None]:
        """After the store lost writes (and reconcile gave the memberships back), take
        each client of `local` (client id -> its groups on this node) out of every group
        that lists it while neither `local` nor the client's own groups do: a store whose
        parts restart apart (a Cluster's masters, in the spread layout) can give back a
        membership on the group's side only. It reads every group in batches; each step
        takes at most UNLIST_ROUND_TRIPS round trips and yields how many memberships it
        took out. A store whose group sets roll back with the clients' own (in one slot,
        or in memory) yields nothing."""
        ...

    async def presence_entries(self, client_id: str,
                               groups: Collection[str]) -> dict[str, str]:
        """Return the presence entries of `client_id` by group, in those of `groups` where
        it has one (one round trip)."""
        ...

    async def subscribe(self, group: str) -> None:
        """Start receiving `group`'s messages on this node (first local member joined)."""
        ...

    async def unsubscribe(self, group: str) -> None:
        """Stop receiving `group`'s messages on this node (last local member left)."""
        ...


class HistoryStore(Protocol):
    """Sequenced streams: offsets, bounded history, epochs."""

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float, meta_ttl: float
    ) -> Sequenced:
        """Assign the next offset of `target`'s stream, append and publish, in one step.

        The stream keeps `size` entries for `ttl` seconds after its last message; its offset
        and epoch live `meta_ttl` seconds (at least the session TTL, so that a missing stream
        means "nothing was published since"). The publication reaches every node that
        follows the target, this one included. For a client target the message is kept only
        if the client is connected or its session is resumable (offset 0 otherwise). For a
        user target it reaches the nodes holding the user's connections, ``receivers``
        counts those connections and ``clients`` lists their client ids.

        Raises:
            BackendNotReached: the backend was not reached: nothing was sequenced.
            BackendUnavailable: no answer in time: it may have been sequenced (and published).
        """
        ...

    async def read(self, stream: str, after: int, epoch: str, *, max_entries: int = 0,
                   max_bytes: int = 0) -> History:
        """Return the envelopes of `stream` with offsets after `after` in `epoch` (an empty
        epoch with `after` 0 asks for everything the stream still holds).

        A page: at most `max_entries` of them, and no more than `max_bytes` bytes of them but
        for the first (0: no bound). The next page is the read after the last envelope's
        offset, which is `after` plus how many came (a stream's offsets follow each other).
        """
        ...


class SessionStore(Protocol):
    """Resumable sessions: groups, user data and stream baselines kept while away."""

    async def load(self, client_id: str) -> SessionState | None:
        """Return the live or resumable session of `client_id`, or None."""
        ...

    async def activate(self, client_id: str, *, fresh: bool, user_id: str | None = None,
                       conn_id: str | None = None,
                       since: Mapping[str, tuple[int, str]] | None = None,
                       ) -> dict[str, tuple[int, str]]:
        """Mark the session live (no expiry while connected) and held by connection
        `conn_id` (None: by none); a fresh one starts empty and records the baselines of
        the client's ``all``, ``c:<client_id>`` and (for a user's connection)
        ``u:<user_id>`` streams, and returns them: stream -> (offset, epoch), epoch ``""``
        (offset 0) for a stream with no message yet; where `since` gives a stream's
        position (read when the connection registered), that one, else where the stream
        stands now. A revived one returns none.
        Membership changes written from then on name `conn_id`.

        Raises:
            SessionTaken: the client's presence names another connection than `conn_id`
                (checked in the same step where presence shares the session's slot, else
                read just before): nothing changed.
            SessionGone: (not `fresh`) the session no longer exists: it ended after the
                resume loaded it. Nothing changed."""
        ...

    async def held(self, client_id: str, conn_id: str) -> bool:
        """Whether the session of `client_id` exists and is held by connection `conn_id`
        (its last activate named it): False once it ended, a newer connection took it, or
        the store lost it (restarted empty, failed over) since."""
        ...

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """Store one user-data value in the session."""
        ...

    async def suspend(self, client_id: str, ttl: float, *, conn_id: str | None = None) -> None:
        """The client left: keep its session `ttl` seconds, then end it. With `conn_id` (the
        connection that closed): nothing when the client's presence names another
        connection, a newer socket of the client (on any node) that owns the session."""
        ...

    async def end(self, client_id: str, *, conn_id: str | None = None,
                  opening: bool = False) -> list[str]:
        """Drop the session and every group membership now; return the groups left. With
        `conn_id`: nothing (and []) when the client's presence names another connection.
        `opening`: `conn_id` is a new connection ending what its client had before (without
        history): a sweep of the client under way stands down (its end would take what the
        new connection joins from now on)."""
        ...

    async def sweep(self, limit: int = 100) -> list[str]:
        """End sessions whose time ran out (unless the client came back); return their ids."""
        ...
