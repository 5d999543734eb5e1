"""Presence in Redis: one hash per bucket (client_id -> ``node|conn|since_us[|user]``) and
one set of clients per node and bucket; one script per connect and per disconnect, which
also keeps the user hashes (users.py) when they share the slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from stabilizer.backends.base import Presence, Registration, Seat
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore, now_ms, text
from stabilizer.backends.redis.keys import (
    KeyLayout,
    entry_of,
    parse_entry,
    parse_position,
    seat_of,
    since_us,
)
from stabilizer.errors import ConfigError, ConnectionLimitExceededError, UserConnectionLimitError
from stabilizer.pure.streams import session_streams
from stabilizer.pure.wire import kick_prefix


class _Shared(NamedTuple):
    """The keys and arguments every REGISTER call of a node to one bucket shares."""

    keys: tuple[str, str]  # the bucket's presence hash, the node's set there
    node_prefixes: tuple[str, str]  # the node-set and node-channel prefixes
    groups_and_events: tuple[str | bytes, ...]  # group prefix, events channel and prefix
    seats: tuple[str, ...]  # core.seat_args()


class RedisPresence:
    """Who is connected where, cluster-wide."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        # concurrent connects (a reconnect storm) and disconnects share round trips
        self._registers = ScriptBatcher(core, core.scripts.register, "register")
        self._positions = ScriptBatcher(core, core.scripts.stream_positions, "register")
        self._unregisters = ScriptBatcher(core, core.scripts.unregister, "unregister")
        self._aways = ScriptBatcher(core, core.scripts.away_at, "unregister")
        # (bucket, node id, cluster events on) -> what REGISTER calls there share
        self._shared: dict[tuple[int, str, bool], _Shared] = {}

    async def register(self, presence: Presence, *, max_cluster: int | None,
                       end_groups: bool = False, seat: Seat | None = None,
                       baselines: bool = False, fresh: bool = False,
                       abandoned: Callable[[], None] | None = None) -> Registration:
        """One script: record presence (and the user's seat), enforce the limits, and publish
        a KICK naming the previous conn id (and saying whether the connection is `fresh`) to
        the previous owner node, if that is another node; with `end_groups` and one
        presence bucket (the group sets share the slot), whatever groups the client's set
        lists end in the same script. With several buckets the seat follows in a second
        script, which leaves a seat of a connection registered later in place, and no
        user limit can be enforced.
        With `baselines`, the client's session streams are read in the script where
        presence shares their slot (one bucket), else in a script just before it.

        Raises:
            ConfigError: a cluster or user limit with presence spread over several buckets.
            UserConnectionLimitError: the user holds its limit of connections.
            ConnectionLimitExceededError: the cluster is full.
        """
        core = self._core
        keys = core.keys
        user_limit = seat.max_connections if seat is not None else None
        if keys.buckets > 1 and (max_cluster is not None or user_limit is not None):
            raise ConfigError("connection limits across the cluster need presence_buckets=1")
        in_script = end_groups and keys.buckets == 1 and not keys.spread
        value = ""
        if presence.user_id:
            value = seat_of(presence, seat.info if seat is not None else "")
        read = None  # (presence in another slot than the streams: read before)
        if baselines and keys.buckets != 1:
            read = await self._positions.submit(_metas(keys, presence), [])
        # (the call's lists go straight to the batch: this frame keeps none while it waits)
        status, previous, stamp, *raw = await self._registers.submit(*self._register_call(
            presence, max_cluster, in_script, value, user_limit, baselines and read is None,
            fresh),
            undo=None if abandoned is None else partial(_recorded_then, abandoned))
        if int(status) == -1:
            raise ConnectionLimitExceededError(f"cluster connection limit ({max_cluster}) reached")
        if int(status) == -2:
            raise UserConnectionLimitError(
                f"user {presence.user_id!r} already holds {user_limit} connections")
        before = parse_entry(presence.client_id, previous) if previous else None
        if not keys.seats_here:
            if value and stamp:  # the seat carries the since REGISTER stored (SEATS)
                value = seat_of(presence, seat.info if seat is not None else "",
                                stamp=int(stamp))
            await core.follow_seats(_seat_moves(presence, value, before), "register")
        positions = None
        if baselines:
            streams = session_streams(presence.client_id, presence.user_id)
            positions = {stream: at for stream, found in zip(streams, read or raw, strict=True)
                         if (at := parse_position(bytes(found))) is not None}
        return Registration(before, groups_ended=in_script, positions=positions)

    def _register_call(self, presence: Presence, max_cluster: int | None, in_script: bool,
                       value: str, user_limit: int | None,
                       baselines: bool, fresh: bool) -> tuple[list[str], list[Any]]:
        """REGISTER's keys and arguments."""
        core = self._core
        bucket = core.keys.bucket_of(presence.client_id)
        shared = self._shared.get((bucket, presence.node_id, core.events))
        if shared is None:
            shared = self._share(bucket, presence.node_id)
        script_keys = list(shared.keys)
        if in_script:
            script_keys.append(core.keys.client_groups(presence.client_id))
        metas = _metas(core.keys, presence) if baselines else []
        script_keys += metas
        return script_keys, [
            presence.client_id, entry_of(presence), presence.node_id, max_cluster or 0,
            *shared.node_prefixes, kick_prefix(presence.node_id, presence.client_id, fresh=fresh),
            core.publish_command, "1" if in_script else "0", *shared.groups_and_events,
            presence.user_id or "", value, user_limit or 0, *shared.seats, len(metas)]

    def _share(self, bucket: int, node_id: str) -> _Shared:
        """What every REGISTER call of a node to one bucket has in common, built once (a
        reconnect storm makes thousands of calls)."""
        core = self._core
        keys = core.keys
        shared = _Shared(
            keys=(keys.presence(bucket), keys.node_set(bucket, node_id)),
            node_prefixes=(keys.node_set_prefix(bucket), keys.node_channel_prefix(bucket)),
            groups_and_events=(keys.group_prefix, *core.event_args()),
            seats=tuple(core.seat_args()))
        self._shared[(bucket, node_id, core.events)] = shared
        return shared

    async def unregister(self, client_id: str, conn_id: str, *,
                         end_groups: bool = False, away: float = 0.0) -> bool:
        """One script: remove presence (and the user's seat) if it still names `conn_id`;
        with `end_groups` and one slot for both, the client's groups end in it too; with
        `away`, the client goes on the away list for so long: in the same script with one
        presence bucket (the away list shares its slot), else in a step before it, so that
        a node that dies after the removal leaves the session to the sweep either way (a
        client that kept its presence there is taken off the list by the sweep)."""
        core = self._core
        away_ms = int(away * 1000)
        if away_ms and core.keys.buckets != 1:
            await self._aways.submit([core.keys.away], [now_ms() + away_ms, client_id])
            away_ms = 0
        removed = await self._unregisters.submit(*self._unregister_call(
            client_id, conn_id, end_groups and self.ends_groups, away_ms))
        if not removed:
            return False
        entry = parse_entry(client_id, removed)
        if not core.keys.seats_here and entry is not None and entry.user_id is not None:
            await core.follow_seats(["d", entry.user_id, client_id, conn_id], "unregister")
        return True

    def _unregister_call(self, client_id: str, conn_id: str, end_groups: bool,
                         away_ms: int) -> tuple[list[str], list[str | bytes | int]]:
        """UNREGISTER's keys and arguments."""
        core = self._core
        keys = core.keys
        bucket = keys.bucket_of(client_id)
        script_keys = [keys.presence(bucket), keys.node_set(bucket, core.node_id),
                       keys.away if away_ms else keys.presence(bucket)]
        args: list[str | bytes | int] = [client_id, conn_id, *core.seat_args(), away_ms]
        if end_groups:
            script_keys.append(keys.client_groups(client_id))
            args += ["1", keys.group_prefix, *core.event_args(), core.node_id,
                     core.publish_command]
        return script_keys, args

    @property
    def ends_groups(self) -> bool:
        """True when presence and the group sets share one slot (one bucket, not spread)."""
        return not self._core.keys.split_presence

    async def count(self) -> int:
        """HLEN over the presence buckets."""
        core = self._core
        total = 0
        for bucket in range(core.keys.buckets):
            total += int(await core.call(core.client.hlen(core.keys.presence(bucket)), "count"))
        return total

    async def scan(self, batch: int = 500) -> AsyncIterator[Presence]:
        """HSCAN each presence bucket, `batch` entries per round trip."""
        core = self._core
        for bucket in range(core.keys.buckets):
            key = core.keys.presence(bucket)
            cursor = 0
            while True:
                cursor, entries = await core.call(
                    core.client.hscan(key, cursor=cursor, count=batch), "scan")
                for field, value in entries.items():
                    presence = parse_entry(text(field), value)
                    if presence is not None:
                        yield presence
                if int(cursor) == 0:
                    break

    async def locate(self, client_id: str) -> Presence | None:
        """HGET the client's entry."""
        core = self._core
        key = core.keys.presence(core.keys.bucket_of(client_id))
        raw = await core.call(core.client.hget(key, client_id), "locate")
        return None if raw is None else parse_entry(client_id, raw)

    async def held_elsewhere(self, opened: Mapping[str, float]) -> set[str]:
        """The clients of `opened` (client id -> when this node's connection of it opened)
        that presence places on another node through a connection opened then or later
        (as RESYNC compares them: that node keeps the client). One HGET each, at once."""
        core = self._core
        keys = core.keys
        clients = sorted(opened)
        found = await asyncio.gather(*(core.call(core.client.hget(
            keys.presence(keys.bucket_of(client_id)), client_id), "reconcile_groups")
            for client_id in clients))
        held: set[str] = set()
        for client_id, raw in zip(clients, found, strict=True):
            parts = [] if raw is None else text(raw).split("|", 3)
            if (len(parts) >= 3 and parts[0] not in ("", core.node_id) and parts[2].isdigit()
                    and int(parts[2]) >= since_us(opened[client_id])):
                held.add(client_id)
        return held


def _seat_moves(presence: Presence, value: str, before: Presence | None) -> list[str]:
    """The seat changes a register leaves for the namespace's slot: the new seat, and the
    previous connection's if it belonged to another user."""
    ops: list[str] = []
    if presence.user_id is not None:
        ops += ["s", presence.user_id, presence.client_id, value]
    if before is not None and before.user_id is not None and before.user_id != presence.user_id:
        ops += ["d", before.user_id, presence.client_id, before.conn_id]
    return ops


def _metas(keys: KeyLayout, presence: Presence) -> list[str]:
    """The meta hashes of the streams a fresh session of `presence`'s client receives."""
    return [keys.stream_meta(s) for s in session_streams(presence.client_id, presence.user_id)]


def _recorded_then(abandoned: Callable[[], None], reply: Any) -> None:
    """A REGISTER answered after its caller gave up: if it recorded the presence (it was
    not refused), or may have (None: its reply was lost), the caller's `abandoned` removes
    it."""
    if reply is None or int(reply[0]) >= 0:
        abandoned()
