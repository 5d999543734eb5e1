"""Groups in Redis: a member set per group and a group set per client, changed by one script
each way; a group's messages go over its own channel to the nodes that follow it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Final

from stabilizer.backends.records import MembershipChange
from stabilizer.backends.redis.core import RedisCore, now_ms, text
from stabilizer.backends.redis.keys import since_us
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.backends.redis.routing import RedisRouting
from stabilizer.backends.redis.spread import CHANGE_ROUND_TRIPS, SpreadSteps, claims_remote
from stabilizer.pure.streams import group_stream

_RECONCILE_BATCH: Final = 200


class RedisGroups:
    """Cluster-wide membership, and this node's group channels."""

    def __init__(self, core: RedisCore, routing: RedisRouting, presence: RedisPresence,
                 spread: SpreadSteps) -> None:
        self._core = core
        self._routing = routing
        self._presence = presence
        self._spread = spread

    @property
    def change_round_trips(self) -> int:
        """One script; spread, its steps (spread.CHANGE_ROUND_TRIPS); with presence in other
        slots, a join of a client the store may not know reads its presence and claims it
        (_await_claim: two more)."""
        keys = self._core.keys
        if keys.spread:
            return CHANGE_ROUND_TRIPS
        return 1 if keys.buckets == 1 else 3

    @property
    def route_round_trips(self) -> int:
        """One script; spread, the check of the client's group set, then the route."""
        return 2 if self._core.keys.spread else 1

    async def publish(self, group: str, envelope: bytes) -> int:
        """PUBLISH to the group's channel; return how many other nodes received it."""
        receivers = await self._core.publish(self._core.keys.group_channel(group), envelope)
        return max(receivers - (1 if self._routing.follows(group) else 0), 0)

    async def _change(self, client_id: str, group: str, action: str,
                      entry: str | None = None) -> MembershipChange:
        core = self._core
        keys = core.keys
        if keys.spread:
            return await self._spread.change(client_id, group, action, entry)
        script_keys = [keys.group(group), keys.client_groups(client_id),
                       keys.session(client_id), keys.stream_meta(group_stream(group)),
                       keys.away]
        if core.sessions:
            holder_in = "s"
        elif keys.buckets == 1:  # presence shares the namespace's slot
            holder_in = "p"
            script_keys.append(keys.presence(0))
        else:
            holder_in = ""
        changed, holder = await core.call(core.scripts.membership(
            keys=script_keys,
            args=[client_id, group, *core.event_args(), core.node_id, core.publish_command,
                  action, holder_in, core.orphan_grace_ms, keys.group_prefix, entry or ""],
        ), "membership")
        if holder is None and action == "join":  # presence lives in other slots
            await self._await_claim(client_id)
        return MembershipChange(bool(changed), None if holder is None else text(holder))

    async def _await_claim(self, client_id: str) -> None:
        """What MEMBERSHIP does for a client the store does not know, where no script can
        read its presence (one more round trip, or two: only for such a client, or one on
        another node: claims_remote)."""
        core = self._core
        located = await self._presence.locate(client_id)
        if located is None or claims_remote(located, core.node_id):
            due = now_ms() + core.orphan_grace_ms
            await core.call(core.client.zadd(core.keys.away, {client_id: due}, nx=True),
                            "membership")

    async def join(self, client_id: str, group: str,
                   presence: str | None = None) -> MembershipChange:
        """One script: SADD to the group and the client's group set (and HSET the presence
        entry, publishing the change, when there is one); read the holder."""
        return await self._change(client_id, group, "join", presence)

    async def update_presence(self, client_id: str, group: str, presence: str) -> bool:
        """One script (MEMBERSHIP's update): HSET the entry of a member, publishing the
        change; False when the client is not a member."""
        return (await self._change(client_id, group, "update", presence)).changed

    async def presence_state(self, group: str) -> tuple[int, dict[str, str]]:
        """One script: the group's presence version and entries, read at once."""
        core = self._core
        keys = core.keys
        reply = await core.call(core.scripts.presence_state(
            keys=[keys.group_presence(group), keys.group_presence_version(group)], args=[],
        ), "presence_state")
        pairs = reply[1:]
        return int(reply[0]), {text(pairs[i]): text(pairs[i + 1])
                               for i in range(0, len(pairs) - 1, 2)}

    async def count_presence(self, group: str) -> int:
        """HLEN of the group's presence hash."""
        core = self._core
        return int(await core.call(core.client.hlen(core.keys.group_presence(group)),
                                   "count_presence"))

    async def leave(self, client_id: str, group: str) -> MembershipChange:
        """One script: SREM from the group and the client's group set (HDEL its presence
        entry, publishing the change, if it had one); read the holder."""
        return await self._change(client_id, group, "leave")

    async def route_change(self, client_id: str, group: str, *, member: bool,
                           envelope: bytes) -> bool:
        """One script (ROUTE_CHANGE): check the client's group set, look up the owner and
        publish; spread, the check and then ROUTE; with presence in other slots, the plain
        ROUTE."""
        core = self._core
        keys = core.keys
        if keys.spread:  # the client's group set first, then the route: two steps
            listed = await core.call(core.client.sismember(keys.client_groups(client_id),
                                                           group), "route_change")
            if bool(int(listed)) != member:
                return False
            return await self._routing.route(client_id, envelope)
        if keys.buckets != 1:  # presence lives in other slots: no script can check both
            return await self._routing.route(client_id, envelope)
        reached = await core.call(core.scripts.route_change(
            keys=[keys.presence(0), keys.client_groups(client_id)],
            args=[client_id, group, "1" if member else "0", keys.node_channel_prefix(0),
                  envelope, core.publish_command],
        ), "route_change")
        return int(reached) > 0

    async def members(self, group: str) -> list[str]:
        """SSCAN the group's member set."""
        return await self._core.scan_set(self._core.keys.group(group), "members")

    async def count_members(self, groups: Sequence[str]) -> dict[str, int]:
        """SCARD of each group's member set, in one pipeline (RedisCore.group_sizes)."""
        return await self._core.group_sizes(groups, "count_members")

    async def of_client(self, client_id: str) -> list[str]:
        """SSCAN the client's group set."""
        return await self._core.scan_set(self._core.keys.client_groups(client_id), "groups")

    async def reconcile(self, local: Mapping[str, Collection[str]], *,
                        restore: bool = False,
                        presence: Mapping[str, Mapping[str, str]] | None = None,
                        opened: Mapping[str, float] | None = None,
                        ) -> dict[str, list[str]]:
        """One script per batch of clients: SMEMBERS of each client's group set, after
        SADDs of its local groups (and the missing presence entries) with `restore`, but
        for a client a newer connection on another node holds (`opened`). The script reads
        presence when it shares the namespace's slot; in other slots, a read before it."""
        core = self._core
        keys = core.keys
        opened = opened or {}
        if keys.spread:
            return await self._spread.reconcile(local, restore, presence or {}, opened)
        in_script = keys.buckets == 1
        if restore and not in_script:
            held = await self._presence.held_elsewhere(
                {c: since for c, since in opened.items() if local.get(c)})
            local = {c: () if c in held else groups for c, groups in local.items()}
        clients = sorted(local)
        listed: dict[str, list[str]] = {}
        for start in range(0, len(clients), _RECONCILE_BATCH):
            batch = clients[start:start + _RECONCILE_BATCH]
            args: list[str | int] = [keys.group_prefix, "1" if restore else "0",
                                     core.orphan_grace_ms, core.node_id, core.publish_command,
                                     "1" if in_script else "0"]
            for client_id in batch:
                groups = sorted(local[client_id]) if restore else []
                entries = (presence or {}).get(client_id, {})
                since = opened.get(client_id)
                args += [client_id, "" if since is None else since_us(since), len(groups)]
                for group in groups:
                    args += [group, entries.get(group, "")]
            reply = await core.call(core.scripts.reconcile_groups(
                keys=[keys.away, *([keys.presence(0)] if in_script else []),
                      *(keys.client_groups(client_id) for client_id in batch)],
                args=args,
            ), "reconcile_groups")
            for client_id, groups in zip(batch, reply, strict=True):
                listed[client_id] = sorted(text(group) for group in groups)
        return listed

    async def unlist_returned(self, local: Mapping[str, Collection[str]],
                              ) -> AsyncGenerator[int, None]:
        """Spread, in batches (SlotSteps.unlist_returned); in the other layouts every group
        set lives in the namespace's slot, which rolls back with the clients' sets:
        nothing."""
        if self._core.keys.spread:
            async for taken in self._spread.unlist_returned(local):
                yield taken

    async def presence_entries(self, client_id: str,
                               groups: Collection[str]) -> dict[str, str]:
        """One script (PRESENCE_ENTRIES): HGET the client's entry in each group's presence
        hash."""
        core = self._core
        if core.keys.spread:
            return await self._spread.presence_entries(client_id, groups)
        wanted = sorted(set(groups))
        if not wanted:
            return {}
        reply = await core.call(core.scripts.presence_entries(
            keys=[core.keys.group_presence(group) for group in wanted], args=[client_id],
        ), "presence_entries")
        return {group: text(raw) for group, raw in zip(wanted, reply, strict=True) if raw}

    async def subscribe(self, group: str) -> None:
        """Follow the group's channel (confirmed by Redis before this returns)."""
        await self._routing.follow_group(group)

    async def unsubscribe(self, group: str) -> None:
        """Stop following the group's channel."""
        await self._routing.unfollow_group(group)
