"""Group membership: cluster-wide in the backend, local in a table of connections per group.

The local table (local_groups.py) follows a group's channel while the group has local
members. A client on another node joins or leaves through a MEMBERSHIP envelope routed to its
node, while the change still stands in the backend. The envelope may be stale when it
arrives (a change on the client's node may have undone it meanwhile), so the client's node
does not take its word: in the client's turn it makes the connection's groups the ones the
backend lists then, one round trip per remote change.

The backend is the truth; local membership follows it. Where the two can part (a MEMBERSHIP
envelope lost with a subscription, a join that lands on a socket another one replaces, a
store that restarts empty), ``settle`` makes them agree again: a client's local groups
become the ones the backend lists, after giving the backend back what it lost, if it did:
the memberships, and the presence entries this node's book (entries.py) holds for them.
Changes of one client's memberships on this node take turns, so that a settle never reads
the backend between a local change and its write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final

from stabilizer.backends.base import GroupStore, MembershipChange
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable, ConnectionNotFoundError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.presence import entry_text
from stabilizer.pure.streams import client_stream, user_stream
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.services.delivery.doubts import Doubts
from stabilizer.services.delivery.entries import MemberEntries
from stabilizer.services.delivery.local_groups import LocalGroups
from stabilizer.services.delivery.turns import Turns
from stabilizer.services.events import Events

logger = logging.getLogger(__name__)

_JOIN, _LEAVE = "join", "leave"
_SETTLE: Final = "settle"  # a MEMBERSHIP ref: take the groups the backend lists
_SETTLE_BATCH: Final = 200  # clients per round trip of GroupStore.reconcile
_SETTLE_ROUND_TRIPS: Final = 3  # a settle's budget beyond its batches


class Membership:
    """Which local connections belong to which group, kept in step with the backend."""

    def __init__(self, ctx: NodeContext, events: Events,
                 on_unfollow: Callable[[str], None],
                 on_forget: Callable[[Connection], None] | None = None,
                 on_leave: Callable[[Connection, str], None] | None = None) -> None:
        self._ctx = ctx
        self._events = events
        self._on_unfollow = on_unfollow  # a stream no local connection follows any more
        self._on_forget = on_forget  # a connection closed
        self._on_leave = on_leave  # a local connection left a group, however it left
        self._turns = Turns()  # one change of a client's local memberships at a time
        self._doubts = Doubts()
        self._backend_log = RateLimitedLog(logger)
        self._local = LocalGroups(ctx, on_unfollow, self._backend_log)
        self.entries = MemberEntries(ctx, self._backend_log)  # local members' entries
        self._book = self.entries.book

    def local_members(self, group: str) -> set[Connection]:
        """The local members of `group` (empty when there are none)."""
        return self._local.members(group)

    def follows(self, group: str) -> bool:
        """True while this node receives `group`'s channel (it has or is adding a member)."""
        return self._local.follows(group)

    def local_groups(self) -> list[tuple[str, set[Connection]]]:
        """Every group with local members (or a first one joining), with them, as of now."""
        return self._local.indexed()

    def __len__(self) -> int:
        return len(self._local)

    def subscription_lost(self) -> None:
        """The listener lost its subscription: a MEMBERSHIP envelope may be lost with it."""
        self._doubts.subscription_lost()

    def turn(self, client_id: str) -> AbstractAsyncContextManager[None]:
        """The client's turn: a change of its memberships (locally and in the backend) runs
        whole before or after another one, the bookkeeping of its close included."""
        return self._turns.hold(client_id)

    def may_list(self, conn: Connection) -> bool:
        """True when the backend may list groups of `conn`'s client: `conn` is a local member
        of some, a change of the client's memberships is under way here (a join lists its
        group on the connection only once subscribed), or one failed or was lost."""
        return (bool(conn.groups) or conn.client_id in self._turns
                or conn.client_id in self._doubts or self.in_doubt)

    @property
    def in_doubt(self) -> bool:
        """True from a lost subscription until a node-wide settle once it is back: local
        memberships may miss one the backend lists (a closing client must leave its groups
        in the backend even if it has none here)."""
        return self._doubts.node_wide

    async def join(self, client_id: str, group: str, meta_json: str | None = None, *,
                   landed: Callable[[], None] | None = None) -> None:
        """Add a client on any node to a group (with its presence metadata, as JSON text,
        when there is some). `landed` is called in the client's turn once a local client's
        join is recorded here: the changes ordered before it have landed, later ones follow.

        Raises:
            ConnectionNotFoundError: the client is not connected anywhere.
            BackendUnavailable: the backend cannot be reached.
        """
        ctx = self._ctx
        conn = ctx.pool.get(client_id)
        backend = ctx.backend
        if conn is None:
            owner = await ctx.ask(backend.presence.locate(client_id)) if backend.is_shared else None
            if owner is None:
                raise ConnectionNotFoundError(f"client {client_id!r} is not connected")
            entry = None if meta_json is None else entry_text(client_id, owner.user_id,
                                                               meta_json)
            change = await self._written(client_id, ctx.ask(
                _join(backend.groups, client_id, group, entry),
                round_trips=backend.groups.change_round_trips))
            await self._tell_owner(client_id, group, _JOIN, change.holder)
            return
        entry = None if meta_json is None else entry_text(client_id, conn.user_id, meta_json)
        async with self._turns.hold(client_id):
            had = group in conn.groups
            await self.join_local(conn, group)
            if landed is not None:
                landed()
            mark = self._book.begin(conn, group)
            try:
                change = await self._written(client_id, ctx.ask(
                    _join(backend.groups, client_id, group, entry),
                    round_trips=backend.groups.change_round_trips))
            except BaseException:
                # the write failed or its outcome is unknown: not a member here until the
                # settle that follows (when the backend answers again) reads what it lists
                if not had:  # (its subscribe, if it was one, is answered with an error)
                    await self.leave_local(conn, group, tell=False)
                raise
            if entry is not None and conn.is_open:  # (a closed one's book is forgotten)
                self._book.learned(conn, group, entry, mark)
        if change.changed:
            self._events.membership(_JOIN, client_id, group)
        await self._after_local(conn, group, _JOIN, change.holder)

    async def leave(self, client_id: str, group: str, *, asked: bool = False) -> None:
        """Remove a client on any node from a group (no error if it was not a member). A v2
        client is told, unless it `asked` to leave (its unsubscribe is answered instead).

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        ctx = self._ctx
        conn = ctx.pool.get(client_id)
        if conn is None:
            change = await self._written(client_id, ctx.ask(
                ctx.backend.groups.leave(client_id, group),
                round_trips=ctx.backend.groups.change_round_trips))
            if ctx.backend.is_shared:
                await self._tell_owner(client_id, group, _LEAVE, change.holder)
            return
        async with self._turns.hold(client_id):
            change = await self._written(client_id, ctx.ask(
                ctx.backend.groups.leave(client_id, group),
                round_trips=ctx.backend.groups.change_round_trips))
            await self.leave_local(conn, group, tell=not asked)
        if change.changed:
            self._events.membership(_LEAVE, client_id, group)
        await self._after_local(conn, group, _LEAVE, change.holder)

    async def _after_local(self, conn: Connection, group: str, action: str,
                           holder: str | None) -> None:
        """After a join or leave through the local socket `conn`: a socket replaced
        meanwhile hands the client's memberships over to the live one; a change the
        backend wrote for another connection (this socket's replacement elsewhere, whose
        kick has not arrived, or never will) is carried out by that connection's node, as a
        change from a node without a socket of the client is."""
        if not conn.is_open:  # replaced meanwhile: the live socket may be on another node
            await self.hand_over(conn.client_id)
        elif holder and holder != conn.conn_id and self._ctx.backend.is_shared:
            try:
                await self._tell_owner(conn.client_id, group, action, holder)
            except BackendUnavailable as exc:  # (the change itself is written)
                self._ctx.want_resync()
                self._backend_log.warning("%s of %r in %r not routed to its holder %s "
                                          "(backend down)", action, conn.client_id, group,
                                          holder, exc=exc)

    async def _written(self, client_id: str,
                       change: Awaitable[MembershipChange]) -> MembershipChange:
        """Await a membership change of `client_id` in the backend. One that fails or is
        cancelled may have run in part (spread: between its slots' steps): the next
        node-wide settle reconciles the client, even if it has left this node by then."""
        try:
            return await change
        except BaseException:  # (its client alone: a node-wide resync would cost every
            self._doubts.change_failed(client_id)  # client of the node, at a client's will)
            raise

    async def _tell_owner(self, client_id: str, group: str, action: str,
                          holder: str | None) -> None:
        ctx = self._ctx
        envelope = Envelope(Kind.MEMBERSHIP, ctx.node_id, client_id, group, ref=action,
                            holder=holder)
        groups = ctx.backend.groups
        await ctx.ask(groups.route_change(client_id, group, member=action == _JOIN,
                                          envelope=encode(envelope)),
                      round_trips=groups.route_round_trips)

    def apply(self, envelope: Envelope) -> None:
        """Act on a MEMBERSHIP envelope for a local client, beside the listener (subscribing
        waits for a confirmation that only the listener reads)."""
        conn = self._ctx.pool.get(envelope.target) if envelope.target else None
        group = envelope.payload
        if conn is None or not isinstance(group, str):
            return
        if envelope.ref == _SETTLE:
            self._ctx.tasks.spawn(self._settle_quietly(conn), name="stabilizer-settle")
        elif envelope.ref in (_JOIN, _LEAVE):
            self._ctx.tasks.spawn(self._carry_out(conn, group, envelope.ref),
                                  name=f"stabilizer-{envelope.ref}")

    async def _carry_out(self, conn: Connection, group: str, action: str) -> None:
        """A join or leave another node wrote: `conn` takes the groups the backend lists
        now, in its client's turn. What the envelope says may be stale by the time it is
        here (a change of the client on this node may have undone it since it was written,
        or been written just before its sender checked it), so only the backend tells: a
        read of the client's groups, which writes nothing (a settle's repairs of changes cut
        short, spread, would briefly list a member that a leave in flight takes out). If
        the backend does not answer, the client is in doubt: the next settle of the doubted
        clients reconciles it."""
        client_id = conn.client_id
        if not conn.is_open:
            return
        try:
            async with self._turns.hold(client_id):  # after a change of it in flight here
                listed = await self._ctx.ask(self._ctx.backend.groups.of_client(client_id))
                await self._agree(conn, listed, expected=True)
        except BackendUnavailable as exc:
            self._doubts.change_failed(client_id)
            self._backend_log.warning("%s of %r in %r not carried out (backend down); the "
                                      "next settle of doubted clients does", action,
                                      client_id, group, exc=exc)

    async def _join_written(self, conn: Connection, group: str) -> None:
        """Join `conn` locally to a group another node (or a lost envelope) made it a member
        of. If this node did not follow the group yet, the change that set the member's
        presence entry went out before it listened: it reads the entry, for the book."""
        followed = self._local.follows(group)
        await self.join_local(conn, group)
        if not followed:
            await self.entries.learn(conn, [group])

    async def join_local(self, conn: Connection, group: str) -> None:
        """Record local membership (see LocalGroups.join)."""
        await self._local.join(conn, group)

    async def leave_local(self, conn: Connection, group: str, *, tell: bool = True) -> None:
        """Drop local membership (see LocalGroups.leave); a member no more follows nothing
        of the group (its presence included). A v2 member is told (`tell`) unless the leave
        is its own unsubscribe, its close, a failed join's undoing or a fresh session's start
        (not greeted yet: nothing may precede its session frame)."""
        self._book.ended(conn, group)
        if self._on_leave is not None:
            self._on_leave(conn, group)
        await self._local.leave(conn, group, tell=tell)

    async def start_afresh(self, conn: Connection) -> None:
        """The backend ended every membership of `conn`'s client (a fresh session): `conn`
        keeps none here either, not even one applied before the session began. Call it in
        the client's turn."""
        await self._agree(conn, [], tell=False)

    async def forget(self, conn: Connection) -> None:
        """A connection closed: drop its local memberships (its cluster membership is the
        closing service's decision: kept while the session is resumable)."""
        if self._on_forget is not None:
            self._on_forget(conn)
        self._book.forget(conn)
        for group in conn.groups:
            await self.leave_local(conn, group, tell=False)
        if self._ctx.pool.get(conn.client_id) in (None, conn):  # (not replaced here)
            self._on_unfollow(client_stream(conn.client_id))
        if conn.user_id is not None and not self._ctx.pool.of_user(conn.user_id):
            self._on_unfollow(user_stream(conn.user_id))

    async def settle_doubted(self) -> None:
        """Settle the clients whose membership change failed or was cancelled, alone.

        Raises:
            BackendUnavailable: the backend cannot be reached (they stay in doubt).
        """
        clients = self._doubts.take_clients()
        if clients:
            found = (self._ctx.pool.get(client_id) for client_id in sorted(clients))
            await self.settle([conn for conn in found if conn is not None], doubted=clients)

    async def settle(self, conns: Sequence[Connection], *, restore: bool = False,
                     node_wide: bool = False, doubted: Collection[str] = ()) -> None:
        """Make the local memberships of `conns` agree with the groups the backend lists
        for their clients (one round trip per batch). With `restore` (the backend lost this
        node's state: it restarted empty, or reaped the node), the backend first takes the
        local memberships back, with the presence entries this node knows of them, except
        those of a client a newer connection on another node holds (it came back there
        while this node was cut off: the resync closes the local socket). A
        `node_wide` settle (of every local connection) that began while subscribed ends the
        doubt of the subscription losses before it; it takes the doubted clients too. Each
        client in `doubted` is settled wherever it is now (taken from the doubts: they get
        it back if this fails).

        Raises:
            BackendUnavailable: the backend cannot be reached (nothing changed locally).
        """
        ctx = self._ctx
        subscribed = not ctx.follows_others or ctx.backend.routing.subscribed.is_set()
        open_conns = [conn for conn in conns if conn.is_open]
        losses, doubted = 0, set(doubted)
        if node_wide:  # (clients that left meanwhile too: nothing else would complete them)
            losses, taken = self._doubts.begin_settle()
            doubted |= taken
        local: dict[str, Collection[str]] = dict.fromkeys(doubted, ())
        local.update((conn.client_id, conn.groups) for conn in open_conns)
        try:
            if local:
                async with self._turns.hold(*local):
                    presence = ({conn.client_id: self._entries(conn) for conn in open_conns}
                                if restore else None)
                    opened = ({conn.client_id: conn.created_at for conn in open_conns}
                              if restore else None)
                    listed = await ctx.ask(
                        ctx.backend.groups.reconcile(local, restore=restore,
                                                     presence=presence, opened=opened),
                        round_trips=_SETTLE_ROUND_TRIPS + len(local) // _SETTLE_BATCH)
                    for conn in open_conns:
                        await self._agree(conn, listed.get(conn.client_id, []))
        except BaseException:
            self._doubts.give_back(doubted)
            raise
        for client_id in sorted(doubted - {conn.client_id for conn in open_conns}):
            await self.hand_over(client_id)  # its node (if any) takes what is listed now
        if node_wide and subscribed:
            self._doubts.settled(losses)

    def _entries(self, conn: Connection) -> dict[str, str]:
        """The presence entries of `conn`'s local memberships, as far as this node knows."""
        return {group: entry for group, entry in self._book.entries(conn).items()
                if group in conn.groups}

    async def _agree(self, conn: Connection, listed: list[str], *, tell: bool = True,
                     expected: bool = False) -> None:
        """`conn`'s local groups become `listed`; a difference is a warning unless it is
        `expected` (a change another node wrote)."""
        wanted = set(listed)
        joined = sorted(wanted - conn.groups)
        left = sorted(conn.groups - wanted)
        for group in joined:
            await self._join_written(conn, group)
        for group in left:
            await self.leave_local(conn, group, tell=tell)
        if (joined or left) and not expected:
            logger.warning("memberships of %r disagreed with the backend: joined %s, left %s",
                           conn.client_id, joined, left)

    async def hand_over(self, client_id: str) -> None:
        """A socket of `client_id` was replaced while it held or changed memberships: the
        live socket, on this node or the one presence names, takes what the backend lists."""
        ctx = self._ctx
        live = ctx.pool.get(client_id)
        try:
            if live is not None:
                await self.settle([live])
            elif ctx.backend.is_shared:
                envelope = Envelope(Kind.MEMBERSHIP, ctx.node_id, client_id, "", ref=_SETTLE)
                await ctx.ask(ctx.backend.routing.route(client_id, encode(envelope)))
        except BackendUnavailable as exc:
            ctx.want_resync()
            self._backend_log.warning("groups of %r not handed over (backend down); the "
                                      "resync after it settles them", client_id, exc=exc)

    async def _settle_quietly(self, conn: Connection) -> None:
        try:
            await self.settle([conn])
        except BackendUnavailable as exc:
            self._ctx.want_resync()
            self._backend_log.warning("groups of %r not settled (backend down); the resync "
                                      "after it settles them", conn.client_id, exc=exc)


def _join(groups: GroupStore, client_id: str, group: str,
          entry: str | None) -> Awaitable[MembershipChange]:
    """A plain join asks exactly what it always did; one with presence adds the entry."""
    if entry is None:
        return groups.join(client_id, group)
    return groups.join(client_id, group, presence=entry)
