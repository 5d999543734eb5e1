"""The local half of group membership: which local connections belong to which group, and
the group channels this node follows for them (it subscribes on a group's first local
member and unsubscribes on its last). groups.py keeps it in step with the backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from stabilizer.connection.connection import Connection, State
from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import unsubscribed_frame
from stabilizer.pure.streams import group_stream


class LocalGroups:
    """The local members of each group this node follows."""

    def __init__(self, ctx: NodeContext, on_unfollow: Callable[[str], None],
                 backend_log: RateLimitedLog) -> None:
        self._ctx = ctx
        self._on_unfollow = on_unfollow  # a stream no local connection follows any more
        self._backend_log = backend_log
        self._members: dict[str, set[Connection]] = {}
        # groups whose channel is being subscribed: their next joiners wait for it too
        self._subscribing: dict[str, asyncio.Future[None]] = {}

    def members(self, group: str) -> set[Connection]:
        """The local members of `group` (empty when there are none)."""
        return self._members.get(group, set())

    def indexed(self) -> list[tuple[str, set[Connection]]]:
        """Every group followed here with its local members, as of now (a copy of the
        index, not of the member sets)."""
        return list(self._members.items())

    def follows(self, group: str) -> bool:
        """True while this node has (or is subscribing for) a local member of `group`."""
        return group in self._members

    def __len__(self) -> int:
        return len(self._members)

    async def join(self, conn: Connection, group: str) -> None:
        """Record local membership; follow the group's channel on its first local member.
        The connection lists the group once this node receives it (the subscribe was
        confirmed), so a message sent after it shows reaches the client. A connection
        that is closing joins nothing (its memberships were forgotten)."""
        if not conn.is_open:
            return
        conn.changing_groups()  # (a socket replaced meanwhile hands its groups over)
        members = self._members.get(group)
        if members is None:
            members = self._members[group] = set()
            subscribed = self._subscribing[group] = asyncio.get_running_loop().create_future()
            try:
                await self._ctx.ask(self._ctx.backend.groups.subscribe(group))
            except BackendUnavailable as exc:
                self._backend_log.warning("group %r not subscribed yet (backend down); the "
                                          "listener resubscribes when it reconnects", group,
                                          exc=exc)
            finally:
                if self._subscribing.get(group) is subscribed:
                    del self._subscribing[group]
                subscribed.set_result(None)
        elif (subscribing := self._subscribing.get(group)) is not None:
            await asyncio.shield(subscribing)
        if conn.state is State.OPEN:  # (the subscribe was awaited: it may have closed)
            conn.join(group)
            members.add(conn)
        elif not members and self._members.get(group) is members:
            await self._unfollow(group)  # it closed while we subscribed

    async def leave(self, conn: Connection, group: str, *, tell: bool = False) -> None:
        """Drop local membership; stop following the group when its last local member left.
        With `tell`, a v2 connection that was a member is offered an ``unsubscribed`` frame
        (after the leave: no message of the group follows it)."""
        was_member = group in conn.groups
        conn.leave(group)
        if tell and was_member and conn.protocol >= 2 and conn.is_open:
            conn.offer(Frame.text(unsubscribed_frame(group)), time.monotonic())
        members = self._members.get(group)
        if members is None or conn not in members:
            return  # (not a member here: a first member's subscribe may be under way)
        members.discard(conn)
        if not members:
            await self._unfollow(group)

    async def _unfollow(self, group: str) -> None:
        del self._members[group]
        self._on_unfollow(group_stream(group))
        try:
            await self._ctx.ask(self._ctx.backend.groups.unsubscribe(group))
        except BackendUnavailable as exc:
            self._backend_log.warning("group %r not unsubscribed (backend down)", group, exc=exc)
