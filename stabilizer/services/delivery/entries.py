"""The presence entries of this node's local members, as far as the node knows them.

A book (pure/presence_book.py) keeps, per local membership, the newest entry the node saw:
one it wrote itself, one a PRESENCE envelope of the group told it, or one it read from the
backend (a member whose entry was set before the node followed the group, or before its
connection began). A settle gives the book's entries back to a store that lost them.
"""

from __future__ import annotations

from collections.abc import Collection

from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.presence import Change
from stabilizer.pure.presence_book import PresenceBook


class MemberEntries:
    """The book of local members' presence entries, and what keeps it current."""

    def __init__(self, ctx: NodeContext, backend_log: RateLimitedLog) -> None:
        self._ctx = ctx
        self._backend_log = backend_log
        self.book: PresenceBook[Connection] = PresenceBook()

    async def update_presence(self, client_id: str, group: str, entry: str) -> bool:
        """Set the presence entry of a member on any node; False when it is not a member.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """
        ctx = self._ctx
        conn = ctx.pool.get(client_id)
        if conn is None:
            return await ctx.ask(ctx.backend.groups.update_presence(client_id, group, entry))
        mark = self.book.begin(conn, group)
        updated = await ctx.ask(ctx.backend.groups.update_presence(client_id, group, entry))
        if updated and conn.is_open:
            self.book.learned(conn, group, entry, mark)
        return updated

    def heard(self, group: str, changes: list[Change]) -> None:
        """The changes of a PRESENCE envelope of `group`: note those of a local client's
        entry (the presence watch parsed them, and logs and counts a malformed one)."""
        for change in changes:
            conn = self._ctx.pool.get(change.client_id)
            if conn is not None and conn.is_open:
                self.book.heard(conn, group, change.version,
                                None if change.new is None else change.new.text())

    async def learn(self, conn: Connection, groups: Collection[str]) -> None:
        """Read the presence entries of `conn`'s client in those of `groups` it is a local
        member of (this node follows them), for the book: a member whose entry was set
        before the node followed the group, or before `conn` began (a resumed session)."""
        ctx = self._ctx
        wanted = sorted(group for group in groups if group in conn.groups)
        if not wanted:
            return
        marks = [self.book.begin(conn, group) for group in wanted]
        try:
            entries = await ctx.ask(ctx.backend.groups.presence_entries(conn.client_id, wanted))
        except BackendUnavailable as exc:
            self._backend_log.warning("presence entries of %r not read (backend down)",
                                      conn.client_id, exc=exc)
            return
        if not conn.is_open:
            return
        for group, mark in zip(wanted, marks, strict=True):
            self.book.learned(conn, group, entries.get(group), mark)
