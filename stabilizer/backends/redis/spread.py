"""Groups and sessions in the spread key layout (keys.py): what one script did across a
group, a client and the namespace is done here in steps, one script per slot.

Order keeps the store recoverable. A client's group set lists a group before the group's
member set gets the client, and loses it only after; a join whose group step finds the
group unlisted again (a leave or an end ran between its steps) takes the client back out of
the group's set, so that no member outlives its listing; an ending session moves its groups to
the client's ``leaving`` set, and the client is on the away list (with a lease) until every
group is left. A node that dies between two steps leaves the client due on the away list,
and the next sweep finishes the leaving. A join or leave cut short (Redis did not answer
in time, yet ran the first step) leaves the client's group set listing a group whose set
lacks the client: the settle that follows completes it (SlotSteps.reconcile, in
spread_slots.py with the one-slot steps this builds on). Concurrent changes of
one client and group made by two nodes at once are not atomic here as they are with one
slot: each step is.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final

from stabilizer.backends.base import Presence, SessionGone
from stabilizer.backends.records import MembershipChange
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore, now_ms, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.backends.redis.spread_slots import SlotSteps
from stabilizer.pure.streams import ALL, client_stream, user_stream

#: Round trips, one after another, a join or leave takes at most (RedisGroups.
#: change_round_trips): a join's client step, group step, last client step with the
#: presence read alongside, the sweep's claim (or the undo) and the cluster event; a
#: join that changed nothing: the client step, the group step, the presence read, the
#: group listed again and the claim; a leave: the group step with the presence read, the
#: client step, the group step again and the event.
CHANGE_ROUND_TRIPS: Final = 5

# how long a sweep (or an end) holds a client before another sweep may finish it, in
# op_timeouts: a few steps' worth (a second sweep doing the same leaves changes nothing)
LEASE_OP_TIMEOUTS: Final = 4.0


def claims_remote(located: Presence, node_id: str) -> bool:
    """Whether a join written here (without sessions, presence in other slots) claims a
    client that `located` places on another node: its node may be closing it, having made
    no claim of its own (it knew of no group of the client), and die between the removal of
    its presence and the end of its groups. The claim leaves the group to the sweep then;
    while the client stays present the sweep only takes it off the list."""
    return located.node_id != node_id


async def suspend(core: RedisCore, clients: Collection[str], ttl_ms: int) -> None:
    """SUSPEND in steps: the clients go on the away list (the namespace's slot), then each
    session gets its expiry (its own slot)."""
    keys = core.keys
    await core.call(core.scripts.suspend(keys=[keys.away], args=[ttl_ms, "", *clients]),
                    "suspend")
    await asyncio.gather(*(core.call(core.client.pexpire(keys.session(c), ttl_ms + 1000),
                                     "suspend") for c in clients))


class SpreadSteps(SlotSteps):
    """The multi-step forms of MEMBERSHIP, OPEN_SESSION, END_SESSION, SWEEP and (from
    SlotSteps) RECONCILE_GROUPS, for keys spread over the slots of groups and clients."""

    def __init__(self, core: RedisCore, presence: RedisPresence) -> None:
        super().__init__(core, presence)
        # an end's first step, which every connect without history also runs (a storm's
        # share one round trip)
        self._first_ends = ScriptBatcher(core, core.scripts.client_end, "end_session")
        # an open's first step and a revived session's own (a resume storm's, and a settle
        # holding every session of its node again, share round trips)
        self._positions = ScriptBatcher(core, core.scripts.positions, "open_session")
        self._revives = ScriptBatcher(core, core.scripts.client_open, "open_session")

    @property
    def lease_ms(self) -> int:
        """How long an ending session holds its client on the away list."""
        return int(LEASE_OP_TIMEOUTS * self._core.op_timeout * 1000)

    # --- membership -----------------------------------------------------------------

    async def change(self, client_id: str, group: str, action: str,
                     entry: str | None) -> MembershipChange:
        """A join, leave or presence update. A join: the client's slot, then the group's
        (`_join`). A leave: the group's slot, the client's, and the group's again
        (`_complete` says why). The holder is the session's, or without sessions the
        connection presence names: read alongside a leave, after a join's writes."""
        core = self._core
        if action == "update":
            member, _ = await self._group(group, "update", [client_id], entry or "")
            return MembershipChange(bool(int(member)), None)
        if action == "join":
            changed, holder, located = await self._join(client_id, group, entry)
        else:
            left, located = await asyncio.gather(self._group(group, "leave", [client_id]),
                                                 self._locate(client_id))
            changed = bool(left)
            holder, _ = await self._client(client_id, "leave", group)
            await self._group(group, "leave", [client_id])  # (see _complete)
        if changed:
            await self._events(action, [(client_id, group)])
        if not core.sessions:
            holder = located.conn_id if located is not None else ""
        return MembershipChange(changed, holder)

    async def _join(self, client_id: str, group: str,
                    entry: str | None) -> tuple[bool, str, Presence | None]:
        """A join's steps: the client's set lists the group, the group's set gets the client,
        then (when that changed it) the client's slot once more, with the client's presence
        read alongside: the group must still be listed there. A leave (or an end) that ran
        between the first two steps unlisted it and took the client out of the group's set
        before the second put it there: nothing else would ever take it out (the end, the
        sweep and the settle start from the client's sets), so the join takes it out again
        and reports no change: the leave wins, as the client's node, which the leave told,
        has it. Returns whether the join stands as a change, the session's holder and the
        presence read (None unread with sessions)."""
        core = self._core
        holder, exists = await self._client(client_id, "join", group)
        added, position = await self._group(group, "join", [client_id], entry or "")
        changed = bool(int(added))
        located = None
        if changed:
            baseline = text(position) if core.sessions else ""
            (holder, exists, listed), located = await asyncio.gather(
                self._joined(client_id, group, baseline), self._locate(client_id))
            if not listed:
                await self._group(group, "leave", [client_id])
                return False, holder, located
        elif not core.sessions:
            located = await self._locate(client_id)
        if core.sessions:
            if not exists:  # a client the store does not know: the sweep ends this
                await self._away(client_id, now_ms() + core.orphan_grace_ms, "membership",
                                 only_new=True)
        else:
            await self._claim(client_id, group, located, relist=not changed)
        return changed, holder, located

    async def _claim(self, client_id: str, group: str, located: Presence | None, *,
                     relist: bool) -> None:
        """Without sessions, after a join's writes: for a client the store does not know
        (`located`, its presence read after the writes, is None: it never connected, or it
        left while this join ran), the sweep's claim on it. Read after the writes, so that a
        close whose end read the client's group set before the join listed the group is
        seen gone here (each side writes, then reads what the other wrote). An end that ran
        between the join's two steps dropped the client's group set: unless the join's last
        step found the group still listed (it undoes the join otherwise), with `relist` the
        group goes back in it, and the client's entry on the away list is replaced (a lease
        held there by that end would be taken off at its end: the new due time keeps it),
        so that the sweep leaves the group. A client on another node is claimed too (see
        claims_remote)."""
        core = self._core
        if located is None:
            if relist:
                await self._client(client_id, "join", group)
            await self._away(client_id, now_ms() + core.orphan_grace_ms, "membership")
        elif claims_remote(located, core.node_id):
            await self._away(client_id, now_ms() + core.orphan_grace_ms, "membership",
                             only_new=True)

    async def _locate(self, client_id: str) -> Presence | None:
        """The client's presence when no session names its holder (else None unread)."""
        return None if self._core.sessions else await self._presence.locate(client_id)

    # --- ending sessions --------------------------------------------------------------

    def _end_keys(self, client_id: str) -> list[str]:
        """CLIENT_END's keys: the client's group set, leaving set, session and fence."""
        keys = self._core.keys
        return [keys.client_groups(client_id), keys.leaving(client_id), keys.session(client_id),
                keys.fence(client_id)]

    async def _client_end(self, client_id: str, mode: str, held: bool,
                          opening: list[str] | None = None) -> Any:
        core = self._core
        return await core.call(core.scripts.client_end(
            keys=self._end_keys(client_id), args=[mode, "1" if held else "0", *(opening or [])],
        ), "end_session")

    async def finish(self, clients: Collection[str], deadline: int, mode: str, *,
                     fence: str = "") -> dict[str, list[str]]:
        """End the sessions of `clients`, each held on the away list until `deadline`: move
        each one's groups to its leaving set, leave them, then drop the leaving sets and
        the away entries. Returns the groups each ended session left ('sweep': a client
        whose session is live again, or whose `fence` token a new connection dropped, is
        skipped)."""
        core = self._core
        keys = core.keys
        order = sorted(clients)
        after = ["", fence] if fence else None
        replies = list(await asyncio.gather(*(self._client_end(c, mode, True, after)
                                              for c in order)))
        if mode == "sweep":
            await self._orphans(order, replies)
        ended: dict[str, list[str]] = {}
        by_group: dict[str, list[str]] = defaultdict(list)
        for client_id, reply in zip(order, replies, strict=True):
            if int(reply[0]) < 0:  # live again (a resume), or back since (the fence)
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
        deadline = now_ms() + self.lease_ms
        await self._away(client_id, deadline, op)
        return deadline

    async def end(self, client_id: str, *,
                  guard: Callable[[], Awaitable[object | None]] | None = None) -> list[str]:
        """END_SESSION: a client with no group ends in one step; one with groups goes on the
        away list for the lease first, so that a sweep finishes this if the node dies
        halfway. A `guard` answering None before that stops it (another connection of the
        client owns its groups)."""
        first = await self._first_ends.submit(self._end_keys(client_id), ["end", "0"])
        if int(first[0]) == 0:
            return []
        if guard is not None and await guard() is None:
            return []
        deadline = await self._lease(client_id, "end_session")
        return (await self.finish([client_id], deadline, "end")).get(client_id, [])

    async def sweep(self, limit: int) -> list[str]:
        """SWEEP: the due clients whose presence is gone (`take_due`) end. Without sessions
        (which mark a client's return) each is fenced first: see take_due."""
        fenced = not self._core.sessions
        deadline, due = await self.take_due(limit, fenced=fenced)
        fence = self._fence_token(deadline) if fenced else ""
        return sorted(await self.finish(due, deadline, "sweep", fence=fence))

    def _fence_token(self, deadline: int) -> str:
        """A sweep's fence token: its node and its lease's deadline (a node's sweeps run one
        after another, and a due client is leased to one sweep at a time)."""
        return f"{self._core.node_id}:{deadline}"

    async def take_due(self, limit: int, *, fenced: bool = False) -> tuple[int, list[str]]:
        """The clients due on the away list, held there for the lease until their end takes
        them off (a sweeper that dies midway leaves them to the next sweep); those whose
        presence is back leave the list. Returns the lease's deadline and the others.
        (Also the sweep of the namespace layout with several presence buckets.)

        `fenced`: each due client still gone has its fence set to the sweep's token, and its
        presence is read once more after that: a connection that registers after that read
        drops the fence in its first step, before it can join anything, so the sweep's end
        (which checks the token in the same step) cannot take what it joins."""
        core = self._core
        keys = core.keys
        here = keys.buckets == 1  # presence shares the away list's slot
        reply = await core.call(core.scripts.sweep_due(
            keys=[keys.away, keys.presence(0)] if here else [keys.away],
            args=[limit, self.lease_ms]), "sweep")
        deadline, due = int(reply[0]), [text(c) for c in reply[1:]]
        if not here:
            due = await self._still_gone(deadline, due)
        if fenced and due:
            token = self._fence_token(deadline)
            await asyncio.gather(*(core.call(core.client.set(keys.fence(c), token), "sweep")
                                   for c in due))
            due = await self._still_gone(deadline, due)
        return deadline, due

    async def _still_gone(self, deadline: int, clients: list[str]) -> list[str]:
        """The `clients` with no presence; those back leave the away list (if the lease
        until `deadline` is still theirs)."""
        core = self._core
        located = await asyncio.gather(*(self._presence.locate(c) for c in clients))
        back = [c for c, where in zip(clients, located, strict=True) if where is not None]
        if back:
            await core.call(core.scripts.away_done(
                keys=[core.keys.away], args=[deadline, *back]), "sweep")
        return [c for c, where in zip(clients, located, strict=True) if where is None]

    async def suspend(self, clients: Collection[str], ttl_ms: int) -> None:
        """SUSPEND (see suspend)."""
        await suspend(self._core, clients, ttl_ms)

    # --- opening sessions ------------------------------------------------------------

    async def open(self, client_id: str, *, fresh: bool, user_id: str | None,
                   conn_id: str, guard: Collection[str] = (),
                   given: Sequence[str] = ()) -> dict[str, str] | None:
        """OPEN_SESSION. First, in the namespace's slot: the presence `guard` (the presence
        hash, when presence lives there: None, and nothing changed, if it names another
        connection than `conn_id`), the client off the away list, and a fresh session's
        streams' baselines. Then a resumed session is marked live; a fresh one replaces
        the earlier session in one step when that had no groups; otherwise the client is
        held for the lease while the earlier groups are left. Returns the raw baselines by
        stream: those `given` (in the order of the streams read; '' = none), else as read
        here."""
        core = self._core
        keys = core.keys
        session = [keys.session(client_id), keys.leaving(client_id)]
        streams = [ALL, client_stream(client_id)] if fresh else []
        if fresh and user_id is not None:
            streams.append(user_stream(user_id))
        positions = await self._positions.submit(
            [keys.away, *(keys.stream_meta(s) for s in streams), *guard],
            [client_id, conn_id, "1" if guard else "0"])
        if positions is None:
            return None
        if not fresh:
            if not int(await self._revives.submit(session, [conn_id, "0"])):
                raise SessionGone(client_id)
            return {}
        given = [*given, *[""] * len(streams)][:len(streams)]
        baselines = {stream: at or text(raw)
                     for stream, raw, at in zip(streams, positions, given, strict=True)}
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
