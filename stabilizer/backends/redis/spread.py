"""Groups and sessions in the spread key layout (keys.py): what one script did across a
group, a client and the namespace is done here in steps, one script per slot.

Order keeps the store recoverable. A client's group set lists a group before the group's
member set gets the client, and loses it only after; an ending session moves its groups to
the client's ``leaving`` set, and the client is on the away list (with a lease) until every
group is left. A node that dies between two steps leaves the client due on the away list,
and the next sweep finishes the leaving. A join or leave cut short (Redis did not answer
in time, yet ran the first step) leaves the client's group set listing a group whose set
lacks the client: the settle that follows completes it (reconcile). Concurrent changes of
one client and group made by two nodes at once are not atomic here as they are with one
slot: each step is.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Final

from stabilizer.backends.base import Presence
from stabilizer.backends.records import MembershipChange
from stabilizer.backends.redis.core import RedisCore, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.pure.streams import ALL, client_stream, group_stream, user_stream
from stabilizer.pure.wire import Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent

# how long a sweep (or an end) holds a client before another sweep may finish it, in
# op_timeouts: a few steps' worth (a second sweep doing the same leaves changes nothing)
LEASE_OP_TIMEOUTS: Final = 4.0


def _now_ms() -> int:
    return int(time.time() * 1000)


async def suspend(core: RedisCore, clients: Collection[str], ttl_ms: int) -> None:
    """SUSPEND in steps: the clients go on the away list (the namespace's slot), then each
    session gets its expiry (its own slot)."""
    keys = core.keys
    await core.call(core.scripts.suspend(keys=[keys.away], args=[ttl_ms, "", *clients]),
                    "suspend")
    await asyncio.gather(*(core.call(core.client.pexpire(keys.session(c), ttl_ms + 1000),
                                     "suspend") for c in clients))


class SpreadSteps:
    """The multi-step forms of MEMBERSHIP, OPEN_SESSION, END_SESSION, SWEEP and
    RECONCILE_GROUPS, for keys spread over the slots of groups and clients."""

    def __init__(self, core: RedisCore, presence: RedisPresence) -> None:
        self._core = core
        self._presence = presence

    @property
    def lease_ms(self) -> int:
        """How long an ending session holds its client on the away list."""
        return int(LEASE_OP_TIMEOUTS * self._core.op_timeout * 1000)

    # --- single steps ---------------------------------------------------------------

    async def _group(self, group: str, action: str, clients: Iterable[str],
                     entry: str = "") -> Any:
        core = self._core
        keys = core.keys
        return await core.call(core.scripts.group_change(
            keys=[keys.group(group), keys.group_presence(group),
                  keys.group_presence_version(group), keys.stream_meta(group_stream(group))],
            args=[action, group, core.node_id, core.publish_command, keys.group_channel(group),
                  entry, *clients],
        ), "membership")

    async def _client(self, client_id: str, action: str, group: str,
                      position: str | None = None) -> tuple[str, bool]:
        core = self._core
        keys = core.keys
        args = [action, group] if position is None else [action, group, position]
        holder, exists = await core.call(core.scripts.client_change(
            keys=[keys.client_groups(client_id), keys.session(client_id)], args=args,
        ), "membership")
        return text(holder), bool(int(exists))

    async def _events(self, event: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Publish a cluster event per (client, group) (cluster_events only)."""
        core = self._core
        if not core.events:
            return
        for client_id, group in pairs:
            body = event_body(ClusterEvent(event, client_id, group, core.node_id))
            await core.publish(core.keys.events_channel,
                               encode(Envelope(Kind.EVENT, core.node_id, None, body)),
                               "membership")

    async def _away(self, client_id: str, due: int, op: str, *, only_new: bool = False) -> None:
        core = self._core
        await core.call(core.client.zadd(core.keys.away, {client_id: due}, nx=only_new), op)

    # --- membership -----------------------------------------------------------------

    async def change(self, client_id: str, group: str, action: str,
                     entry: str | None) -> MembershipChange:
        """A join, leave or presence update. A join: the client's slot, then the group's
        (then the group stream's baseline goes in the session). A leave: the group's slot,
        the client's, and the group's again (`_complete` says why). The holder is the
        session's, or without sessions the connection presence names: read alongside a
        leave, after a join's writes (`_claim`)."""
        core = self._core
        if action == "update":
            member, _ = await self._group(group, "update", [client_id], entry or "")
            return MembershipChange(bool(int(member)), None)
        located = None
        if action == "join":
            holder, exists = await self._client(client_id, "join", group)
            changed, position = await self._group(group, "join", [client_id], entry or "")
            changed = bool(int(changed))
            if changed and exists:
                holder, exists = await self._client(client_id, "join", group, text(position))
            if core.sessions:
                if not exists:  # a client the store does not know: the sweep ends this
                    await self._away(client_id, _now_ms() + core.orphan_grace_ms,
                                     "membership", only_new=True)
            else:
                located = await self._claim(client_id, group)
        else:
            left, located = await asyncio.gather(self._group(group, "leave", [client_id]),
                                                 self._locate(client_id))
            changed = bool(left)
            holder, exists = await self._client(client_id, "leave", group)
            await self._group(group, "leave", [client_id])  # (see _complete)
        if changed:
            await self._events(action, [(client_id, group)])
        if not core.sessions:
            holder = located.conn_id if located is not None else ""
        return MembershipChange(changed, holder)

    async def _claim(self, client_id: str, group: str) -> Presence | None:
        """Without sessions, after a join's writes: the client's presence, and for a client
        the store does not know (it never connected, or it left while this join ran), the
        sweep's claim on it. Read after the writes, so that a close whose end read the
        client's group set before the join listed the group is seen gone here (each side
        writes, then reads what the other wrote). An end that ran between the join's two
        steps dropped the client's group set: the group goes back in it, and the client's
        entry on the away list is replaced (a lease held there by that end would be taken
        off at its end: the new due time keeps it), so that the sweep leaves the group."""
        located = await self._presence.locate(client_id)
        if located is None:
            core = self._core
            await self._client(client_id, "join", group)
            await self._away(client_id, _now_ms() + core.orphan_grace_ms, "membership")
        return located

    async def _locate(self, client_id: str) -> Presence | None:
        """The client's presence when no session names its holder (else None unread)."""
        return None if self._core.sessions else await self._presence.locate(client_id)

    async def leave_groups(self, by_group: Mapping[str, Collection[str]]) -> None:
        """Take the clients out of each group, one script per group (the presence changes
        of one group in one envelope), concurrently."""
        groups = sorted(by_group)
        left = await asyncio.gather(*(self._group(g, "leave", sorted(by_group[g]))
                                      for g in groups))
        await self._events("leave", [(text(c), g) for g, gone in zip(groups, left, strict=True)
                                     for c in gone])

    # --- ending sessions --------------------------------------------------------------

    async def _client_end(self, client_id: str, mode: str, held: bool,
                          opening: list[str] | None = None) -> Any:
        core = self._core
        keys = core.keys
        return await core.call(core.scripts.client_end(
            keys=[keys.client_groups(client_id), keys.leaving(client_id),
                  keys.session(client_id)],
            args=[mode, "1" if held else "0", *(opening or [])],
        ), "end_session")

    async def finish(self, clients: Collection[str], deadline: int,
                     mode: str) -> dict[str, list[str]]:
        """End the sessions of `clients`, each held on the away list until `deadline`: move
        each one's groups to its leaving set, leave them, then drop the leaving sets and
        the away entries. Returns the groups each ended session left ('sweep': a client
        whose session is live again is skipped)."""
        core = self._core
        keys = core.keys
        order = sorted(clients)
        replies = list(await asyncio.gather(*(self._client_end(c, mode, True) for c in order)))
        if mode == "sweep":
            await self._orphans(order, replies)
        ended: dict[str, list[str]] = {}
        by_group: dict[str, list[str]] = defaultdict(list)
        for client_id, reply in zip(order, replies, strict=True):
            if int(reply[0]) == -1:  # live again (a resume)
                continue
            ended[client_id] = sorted(text(g) for g in reply[1:])
            for group in ended[client_id]:
                by_group[group].append(client_id)
        await self.leave_groups(by_group)
        await asyncio.gather(*(core.call(core.client.delete(keys.leaving(c)), "end_session")
                               for c, groups in ended.items() if groups))
        if order:
            await core.call(core.scripts.away_done(
                keys=[keys.away], args=[deadline, *order]), "end_session")
        return ended

    async def _orphans(self, order: list[str], replies: list[Any]) -> None:
        """Sessions the sweep found live ({-1, holder}) whose client has no presence: its
        node removed the presence and died before the session's expiry was set (in the
        client's slot, which the removal cannot reach; it put the client on the away list).
        Each is ended in place if its holder is still the one found, so that a resume
        meanwhile (a new holder) keeps it."""
        live = [(i, text(reply[1])) for i, reply in enumerate(replies)
                if int(reply[0]) == -1 and reply[1]]
        located = await asyncio.gather(*(self._presence.locate(order[i]) for i, _ in live))
        orphans = [(i, holder) for (i, holder), where in zip(live, located, strict=True)
                   if where is None]
        again = await asyncio.gather(*(self._client_end(order[i], "sweep", True, [holder])
                                       for i, holder in orphans))
        for (i, _), reply in zip(orphans, again, strict=True):
            replies[i] = reply

    async def _lease(self, client_id: str, op: str) -> int:
        """Put the client on the away list for the lease; return its deadline."""
        deadline = _now_ms() + self.lease_ms
        await self._away(client_id, deadline, op)
        return deadline

    async def end(self, client_id: str, *,
                  guard: Callable[[], Awaitable[object | None]] | None = None) -> list[str]:
        """END_SESSION: a client with no group ends in one step; one with groups goes on the
        away list for the lease first, so that a sweep finishes this if the node dies
        halfway. A `guard` answering None before that stops it (another connection of the
        client owns its groups)."""
        if int((await self._client_end(client_id, "end", False))[0]) == 0:
            return []
        if guard is not None and await guard() is None:
            return []
        deadline = await self._lease(client_id, "end_session")
        return (await self.finish([client_id], deadline, "end")).get(client_id, [])

    async def sweep(self, limit: int) -> list[str]:
        """SWEEP: the due clients, held for the lease; those whose presence is back leave
        the list; the others' sessions end."""
        core = self._core
        keys = core.keys
        here = keys.buckets == 1  # presence shares the away list's slot
        reply = await core.call(core.scripts.sweep_due(
            keys=[keys.away, keys.presence(0)] if here else [keys.away],
            args=[limit, self.lease_ms]), "sweep")
        deadline, due = int(reply[0]), [text(c) for c in reply[1:]]
        if not here:
            located = await asyncio.gather(*(self._presence.locate(c) for c in due))
            back = [c for c, where in zip(due, located, strict=True) if where is not None]
            if back:
                await core.call(core.scripts.away_done(
                    keys=[keys.away], args=[deadline, *back]), "sweep")
            due = [c for c, where in zip(due, located, strict=True) if where is None]
        return sorted(await self.finish(due, deadline, "sweep"))

    async def suspend(self, clients: Collection[str], ttl_ms: int) -> None:
        """SUSPEND (see suspend)."""
        await suspend(self._core, clients, ttl_ms)

    # --- opening sessions ------------------------------------------------------------

    async def open(self, client_id: str, *, fresh: bool, user_id: str | None,
                   conn_id: str, guard: Collection[str] = ()) -> dict[str, str] | None:
        """OPEN_SESSION. First, in the namespace's slot: the presence `guard` (the presence
        hash, when presence lives there: None, and nothing changed, if it names another
        connection than `conn_id`), the client off the away list, and a fresh session's
        streams' baselines. Then a resumed session is marked live; a fresh one replaces
        the earlier session in one step when that had no groups; otherwise the client is
        held for the lease while the earlier groups are left. Returns the raw baselines by
        stream."""
        core = self._core
        keys = core.keys
        session = [keys.session(client_id), keys.leaving(client_id)]
        streams = [ALL, client_stream(client_id)] if fresh else []
        if fresh and user_id is not None:
            streams.append(user_stream(user_id))
        positions = await core.call(core.scripts.positions(
            keys=[keys.away, *(keys.stream_meta(s) for s in streams), *guard],
            args=[client_id, conn_id, "1" if guard else "0"],
        ), "open_session")
        if positions is None:
            return None
        if not fresh:
            await core.call(core.scripts.client_open(keys=session, args=[conn_id, "0"]),
                            "open_session")
            return {}
        baselines = {stream: text(raw) for stream, raw in zip(streams, positions, strict=True)}
        pairs = [part for pair in baselines.items() for part in pair]
        if int((await self._client_end(client_id, "open", False, [conn_id, *pairs]))[0]) == 0:
            return baselines
        deadline = await self._lease(client_id, "open_session")
        reply = await self._client_end(client_id, "open", True, [conn_id, *pairs])
        if int(reply[0]) == 0:  # (its groups went meanwhile: it began in one step)
            return baselines
        await self.leave_groups({text(g): [client_id] for g in reply[1:]})
        await core.call(core.scripts.client_open(keys=session, args=[conn_id, "1", *pairs]),
                        "open_session")
        await core.call(core.scripts.away_done(keys=[keys.away], args=[deadline, client_id]),
                        "open_session")
        return baselines

    # --- reading and restoring ------------------------------------------------------------

    async def reconcile(self, local: Mapping[str, Collection[str]], restore: bool,
                        presence: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
        """RECONCILE_GROUPS: each client's group set (after adding its local groups, with
        `restore`); restored memberships go back to their groups' sets (with the entries
        their presence hashes lost), and the restored clients on the away list. Then every
        group a client's set lists gets the client too (`_complete`)."""
        core = self._core
        keys = core.keys
        clients = sorted(local)
        if restore:
            await asyncio.gather(*(core.call(core.client.sadd(keys.client_groups(c),
                                                              *sorted(local[c])),
                                             "reconcile_groups")
                                   for c in clients if local[c]))
            by_group: dict[str, list[str]] = defaultdict(list)
            for client_id in clients:
                entries = presence.get(client_id, {})
                for group in local[client_id]:
                    by_group[group] += [client_id, entries.get(group, "")]
            await asyncio.gather(*(self._group(g, "restore", pairs)
                                   for g, pairs in sorted(by_group.items())))
            due = _now_ms() + core.orphan_grace_ms
            await asyncio.gather(*(self._away(c, due, "reconcile_groups", only_new=True)
                                   for c in clients if local[c]))
        replies = await asyncio.gather(*(core.call(core.scripts.client_list(
            keys=[keys.client_groups(c), keys.leaving(c)], args=[]), "reconcile_groups")
            for c in clients))
        listed = {c: sorted(text(g) for g in reply[0])
                  for c, reply in zip(clients, replies, strict=True)}
        leaving = {c: sorted({text(g) for g in reply[1]} - set(listed[c]))
                   for c, reply in zip(clients, replies, strict=True) if reply[1]}
        await self._complete(listed)
        await self._finish_leaving(leaving)
        return listed

    async def _finish_leaving(self, leaving: Mapping[str, Collection[str]]) -> None:
        """Leave what an end that was cut short still lists in a client's leaving set (one
        whose client is connected again is never swept: its settle finishes it), then drop
        the set."""
        core = self._core
        by_group: dict[str, list[str]] = defaultdict(list)
        for client_id, groups in leaving.items():
            for group in groups:
                by_group[group].append(client_id)
        await self.leave_groups(by_group)
        await asyncio.gather(*(core.call(core.client.delete(core.keys.leaving(c)),
                                         "reconcile_groups") for c in leaving))

    async def _complete(self, listed: Mapping[str, Collection[str]]) -> None:
        """Make each group a client's set lists hold the client: a join whose first step ran
        but not its second (Redis stopped answering between them), or a leave the other way
        round, ends as a membership, as the settle then has it locally.

        Each group's set is read first; what it lacks is marked in the client's leaving
        set, put back, and taken out again where the client's set no longer lists the group
        by then (a leave or a fresh session ran meanwhile); then the marks go. A node that
        stops after the marking leaves them for the next settle of the client, or the end
        of its session, to finish (a mark the client's set does not list is left). A leave
        on another node may unlist the group after the check, with the membership put back
        after its own first step: so a leave takes the client out of the group's set once
        more after its second step."""
        core = self._core
        keys = core.keys
        by_group: dict[str, list[str]] = defaultdict(list)
        for client_id, groups in listed.items():
            for group in groups:
                by_group[group].append(client_id)
        groups = sorted(by_group)
        held = await asyncio.gather(*(core.call(core.client.smismember(
            keys.group(g), by_group[g]), "reconcile_groups") for g in groups))
        lacking: dict[str, list[str]] = defaultdict(list)  # client -> groups lacking it
        for group, flags in zip(groups, held, strict=True):
            for client_id, member in zip(by_group[group], flags, strict=True):
                if not int(member):
                    lacking[client_id].append(group)
        if not lacking:
            return
        clients = sorted(lacking)
        await asyncio.gather(*(core.call(core.client.sadd(keys.leaving(c), *lacking[c]),
                                         "reconcile_groups") for c in clients))
        restore: dict[str, list[str]] = defaultdict(list)
        for client_id in clients:
            for group in lacking[client_id]:
                restore[group] += [client_id, ""]
        await asyncio.gather(*(self._group(g, "restore", pairs)
                               for g, pairs in sorted(restore.items())))
        still = await asyncio.gather(*(core.call(core.client.smismember(
            keys.client_groups(c), lacking[c]), "reconcile_groups") for c in clients))
        undo: dict[str, list[str]] = defaultdict(list)
        for client_id, flags in zip(clients, still, strict=True):
            for group, listed_now in zip(lacking[client_id], flags, strict=True):
                if not int(listed_now):
                    undo[group].append(client_id)
        await asyncio.gather(*(self._group(g, "leave", undone) for g, undone in undo.items()))
        await asyncio.gather(*(core.call(core.client.srem(keys.leaving(c), *lacking[c]),
                                         "reconcile_groups") for c in clients))

    async def presence_entries(self, client_id: str, groups: Collection[str]) -> dict[str, str]:
        """The client's entry in each group's presence hash (one HGET per group)."""
        core = self._core
        wanted = sorted(set(groups))
        found = await asyncio.gather(*(core.call(core.client.hget(
            core.keys.group_presence(g), client_id), "presence_entries") for g in wanted))
        return {g: text(raw) for g, raw in zip(wanted, found, strict=True) if raw}
