"""The one-slot steps of the spread key layout (keys.py), and the repair a settle runs
with them: each step is one script (or command) in the slot of one group, one client or
the namespace. spread.py builds the multi-step operations on these; the order rules are
in its docstring.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

from stabilizer.backends.redis.core import RedisCore, now_ms, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.pure.streams import group_stream
from stabilizer.pure.wire import Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent

#: Group sets read at once while looking for memberships a restarted master gave back.
_GROUP_BATCH: Final = 200


class SlotSteps:
    """Single steps over the slots of groups, clients and the namespace, and RECONCILE_GROUPS
    in steps (the repair of a client's memberships a settle runs)."""

    def __init__(self, core: RedisCore, presence: RedisPresence) -> None:
        self._core = core
        self._presence = presence

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

    async def _client(self, client_id: str, action: str, group: str) -> tuple[str, bool]:
        """A join's first step ('join') or a leave's second ('leave') in the client's slot:
        the session's holder, and whether the session exists."""
        core = self._core
        keys = core.keys
        holder, exists = await core.call(core.scripts.client_change(
            keys=[keys.client_groups(client_id), keys.session(client_id)],
            args=[action, group]), "membership")
        return text(holder), bool(int(exists))

    async def _joined(self, client_id: str, group: str,
                      position: str) -> tuple[str, bool, bool]:
        """A join's last step in the client's slot: the session's holder, whether the
        session exists, and whether the client's set still lists the group (then the
        group stream's `position` goes in the session as its baseline, '' = none)."""
        core = self._core
        keys = core.keys
        holder, exists, listed = await core.call(core.scripts.client_change(
            keys=[keys.client_groups(client_id), keys.session(client_id)],
            args=["joined", group, position]), "membership")
        return text(holder), bool(int(exists)), bool(int(listed))

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

    async def leave_groups(self, by_group: Mapping[str, Collection[str]]) -> None:
        """Take the clients out of each group, one script per group (the presence changes
        of one group in one envelope), concurrently."""
        groups = sorted(by_group)
        left = await asyncio.gather(*(self._group(g, "leave", sorted(by_group[g]))
                                      for g in groups))
        await self._events("leave", [(text(c), g) for g, gone in zip(groups, left, strict=True)
                                     for c in gone])


    # --- reading and restoring ------------------------------------------------------------

    async def reconcile(self, local: Mapping[str, Collection[str]], restore: bool,
                        presence: Mapping[str, Mapping[str, str]],
                        opened: Mapping[str, float]) -> dict[str, list[str]]:
        """RECONCILE_GROUPS: each client's group set (after adding its local groups, with
        `restore`, unless presence, read first, has a newer connection on another node
        hold the client: see `opened` in GroupStore.reconcile); restored memberships go
        back to their groups' sets (with the entries their presence hashes lost), the
        restored clients on the away list, and what a group's set lists beyond its
        client's set goes (`_unlist_returned`). Then every group a client's set lists gets
        the client too (`_complete`)."""
        core = self._core
        keys = core.keys
        clients = sorted(local)
        if restore:
            held = await self._presence.held_elsewhere(
                {c: since for c, since in opened.items() if local.get(c)})
            local = {c: () if c in held else groups for c, groups in local.items()}
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
            due = now_ms() + core.orphan_grace_ms
            await asyncio.gather(*(self._away(c, due, "reconcile_groups", only_new=True)
                                   for c in clients if local[c]))
            await self._unlist_returned(local)
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

    async def _unlist_returned(self, local: Mapping[str, Collection[str]]) -> None:
        """After the store lost writes: take the clients of `local` out of every group whose
        set lists one of them while neither its connection here nor its own group set does
        (a group's master restarted from data older than a leave its client's master kept:
        nothing else would ever take it out). Every group set is looked at (a SCAN of each
        master), each one read only as far as it may hold these clients; a membership
        taken out goes back where the client's set lists its group by then (a join ran
        meanwhile), as `_complete` does the other way round."""
        clients = sorted(local)
        if not clients:
            return
        listing: dict[str, list[str]] = defaultdict(list)  # client -> groups listing it
        names = await self._group_names()
        for start in range(0, len(names), _GROUP_BATCH):
            chunk = names[start:start + _GROUP_BATCH]
            held = await asyncio.gather(*(self._members_among(g, clients) for g in chunk))
            for group, members in zip(chunk, held, strict=True):
                for client_id in members:
                    if group not in local[client_id]:
                        listing[client_id].append(group)
        returned = await self._unlisted(listing)
        await asyncio.gather(*(self._group(g, "leave", sorted(returned[g]))
                               for g in sorted(returned)))
        joined = await self._unlisted(_by_client(returned), listed=True)
        await asyncio.gather(*(self._group(g, "restore", [part for c in sorted(joined[g])
                                                          for part in (c, "")])
                               for g in sorted(joined)))

    async def _group_names(self) -> list[str]:
        """The name of every group with a member set (SCAN MATCH, on each master)."""
        core = self._core
        prefix, suffix = core.keys.group_key_bounds
        found = core.client.scan_iter(match=core.keys.group_key_pattern, count=1000,
                                      _type="set")
        names: set[str] = set()
        while True:
            try:
                key = text(await core.call(anext(found), "reconcile_groups"))
            except StopAsyncIteration:
                return sorted(names)
            names.add(key[len(prefix):len(key) - len(suffix)])

    async def _members_among(self, group: str, clients: list[str]) -> list[str]:
        """Which of `clients` the group's set lists: its members read when fewer, else
        SMISMEMBER of the clients."""
        core = self._core
        key = core.keys.group(group)
        if int(await core.call(core.client.scard(key), "reconcile_groups")) <= len(clients):
            wanted = set(clients)
            return [m for m in await core.scan_set(key, "reconcile_groups") if m in wanted]
        flags = await core.call(core.client.smismember(key, clients), "reconcile_groups")
        return [c for c, member in zip(clients, flags, strict=True) if int(member)]

    async def _unlisted(self, groups_of: Mapping[str, Collection[str]], *,
                        listed: bool = False) -> dict[str, set[str]]:
        """By group, the clients whose own group set does not list it (`listed`: does)."""
        core = self._core
        clients = sorted(c for c, groups in groups_of.items() if groups)
        asked = {c: sorted(groups_of[c]) for c in clients}
        flags = await asyncio.gather(*(core.call(core.client.smismember(
            core.keys.client_groups(c), asked[c]), "reconcile_groups") for c in clients))
        found: dict[str, set[str]] = defaultdict(set)
        for client_id, marks in zip(clients, flags, strict=True):
            for group, mark in zip(asked[client_id], marks, strict=True):
                if bool(int(mark)) == listed:
                    found[group].add(client_id)
        return found

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


def _by_client(by_group: Mapping[str, Collection[str]]) -> dict[str, list[str]]:
    """{group: clients} turned into {client: groups}."""
    by_client: dict[str, list[str]] = defaultdict(list)
    for group, clients in by_group.items():
        for client_id in clients:
            by_client[client_id].append(group)
    return by_client
