"""The one-slot steps of the spread key layout (keys.py), and the repair a settle runs
with them: each step is one script (or command) in the slot of one group, one client or
the namespace. spread.py builds the multi-step operations on these; the order rules are
in its docstring.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncGenerator, Collection, Iterable, Mapping
from typing import Any, Final

from redis.asyncio.cluster import ClusterNode, RedisCluster

from stabilizer.backends.redis.core import RedisCore, now_ms, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.pure.streams import group_stream
from stabilizer.pure.wire import Envelope, Kind, encode, event_body
from stabilizer.results import ClusterEvent

#: Keys one SCAN call looks at (a hint) while looking for memberships a restarted master
#: gave back: about the most group sets one batch of `unlist_returned` reads.
_SCAN_COUNT: Final = 500
#: Local clients up to which that batch asks each group set about all of them at once.
_ASK_ALL: Final = 64


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
        restored clients on the away list. Then every group a client's set lists gets the
        client too (`_complete`). What a group's set lists beyond its client's set is left
        to `unlist_returned`, after the presence resync."""
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

    async def unlist_returned(self, local: Mapping[str, Collection[str]],
                              ) -> AsyncGenerator[int, None]:
        """After the store lost writes: take the clients of `local` out of every group whose
        set lists one of them while neither `local` nor the client's own group set does (a
        group's master restarted from data older than a leave its client's master kept:
        nothing else would ever take it out). Every group set is looked at, in batches:
        one SCAN call on each master whose walk is not over, then the sets it found, read
        in one pipeline (two with many clients: `_listing`); each batch yields how many
        memberships it took out. A membership taken out goes back where the client's set
        lists its group by then (a join ran meanwhile), as `_complete` does the other way
        round."""
        clients = sorted(local)
        if not clients:
            return
        client = self._core.client
        walks: list[tuple[ClusterNode | None, int]] = (
            [(node, 0) for node in client.get_primaries()]
            if isinstance(client, RedisCluster) else [(None, 0)])
        while walks:
            found = await asyncio.gather(*(self._scan(node, cursor) for node, cursor in walks))
            walks = [(node, cursor) for (node, _), (cursor, _) in zip(walks, found, strict=True)
                     if cursor]
            yield await self._unlist(await self._listing(
                sorted({name for _, names in found for name in names}), local))

    async def _scan(self, node: ClusterNode | None, cursor: int) -> tuple[int, list[str]]:
        """One SCAN call for group member sets (on `node`, a Cluster's master): the next
        cursor (0: the walk is over) and the names of the groups found."""
        core = self._core
        client = core.client
        prefix, suffix = core.keys.group_key_bounds
        options: dict[str, Any] = {"match": core.keys.group_key_pattern,
                                   "count": _SCAN_COUNT, "_type": "set"}
        if isinstance(client, RedisCluster) and node is not None:
            cursors, keys = await core.call(client.scan(cursor, target_nodes=node, **options),
                                            "unlist_returned")
            cursor = cursors[node.name]
        else:
            cursor, keys = await core.call(client.scan(cursor, **options), "unlist_returned")
        return int(cursor), [text(key)[len(prefix):len(text(key)) - len(suffix)]
                             for key in keys]

    async def _listing(self, groups: list[str], local: Mapping[str, Collection[str]],
                       ) -> dict[str, list[str]]:
        """By client of `local`, the groups among `groups` whose set lists it while `local`
        does not. Each set is asked about every client at once (SMISMEMBER, in one
        pipeline); with more than _ASK_ALL clients, the sizes are read first (another
        pipeline), a set no larger than the clients read whole instead and an empty one
        skipped."""
        core = self._core
        clients = sorted(local)
        sizes = (await core.group_sizes(groups, "unlist_returned")
                 if len(clients) > _ASK_ALL else None)
        whole = {g for g in groups if sizes is not None and sizes[g] <= len(clients)}
        asked = [g for g in groups if sizes is None or sizes[g]]
        pipe = core.client.pipeline(transaction=False)
        for group in asked:
            if group in whole:
                pipe.smembers(core.keys.group(group))
            else:
                pipe.smismember(core.keys.group(group), clients)
        replies = await core.call(pipe.execute(), "unlist_returned") if asked else []
        listing: dict[str, list[str]] = defaultdict(list)
        for group, reply in zip(asked, replies, strict=True):
            members = ([c for c in map(text, reply) if c in local] if group in whole
                       else [c for c, flag in zip(clients, reply, strict=True) if int(flag)])
            for client_id in members:
                if group not in local[client_id]:
                    listing[client_id].append(group)
        return listing

    async def _unlist(self, listing: Mapping[str, Collection[str]]) -> int:
        """Take each client out of the groups `listing` names for it that its own group set
        does not list, then put back those it lists by then; return how many stayed out."""
        if not listing:
            return 0
        returned = await self._unlisted(listing)
        await asyncio.gather(*(self._group(g, "leave", sorted(returned[g]))
                               for g in sorted(returned)))
        joined = await self._unlisted(_by_client(returned), listed=True)
        await asyncio.gather(*(self._group(g, "restore", [part for c in sorted(joined[g])
                                                          for part in (c, "")])
                               for g in sorted(joined)))
        return (sum(len(clients) for clients in returned.values())
                - sum(len(clients) for clients in joined.values()))

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
