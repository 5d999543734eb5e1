"""Node liveness in Redis: a sorted set of deadlines on the Redis clock, reaping of nodes
that stopped refreshing, and re-registration after an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from stabilizer.backends.base import (
    ORPHAN_GRACE_TTLS,
    Liveness,
    NodeReport,
    Presence,
    Resynced,
    UserLimit,
)
from stabilizer.backends.redis.core import RedisCore, text
from stabilizer.backends.redis.keys import entry_of, seat_of, since_us
from stabilizer.backends.redis.spread import suspend
from stabilizer.config import CloseCode
from stabilizer.errors import BackendUnavailable
from stabilizer.pure.users import info_json
from stabilizer.pure.wire import client_close_prefix, close_body, kick_prefix, pack_str

logger = logging.getLogger(__name__)

_REAP_BATCH: Final = 500
_RESYNC_BATCH: Final = 200


class RedisLiveness:
    """Keepalives, reaping and resync for one node."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._refused = False  # INFO was refused: the incarnation is unknown

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
        """Refresh our deadline and reap nodes whose deadline passed.

        ``rejoined`` is True when our own entry had vanished (Redis restarted empty, or we
        were reaped after a long pause) or a reaper claimed us and has not finished: the
        caller must re-register its presence and give back its memberships.
        """
        core = self._core
        keys = core.keys
        core.orphan_grace_ms = int(node_ttl * ORPHAN_GRACE_TTLS * 1000)
        reply = await core.call(core.scripts.keepalive(
            keys=[keys.nodes, keys.reaped], args=[core.node_id, int(node_ttl * 1000)],
        ), "keepalive")
        rejoined, claimed = int(reply[0]), [text(node) for node in reply[1:]]
        reaped: list[str] = []
        for node in claimed:
            if node != core.node_id:
                await self._reap_node(node, session_ttl)
                reaped.append(node)
        return Liveness(tuple(reaped), bool(rejoined))

    async def incarnation(self) -> str | None:
        """Each master's run id (new with every start of the process) and replication id
        (new when a replica is promoted), from INFO. None when INFO is refused (an ACL
        without it, or the command renamed away) or names no run id."""
        if self._refused:
            return None
        try:
            servers, replication = await self._info()
        except BackendUnavailable as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise
            self._refused = True
            logger.warning("Redis refuses INFO (%s): a failover or restart cannot be told "
                           "from a slow reply, so each failure to reach Redis is followed "
                           "by a resync of this node's presence", exc.__cause__)
            return None
        if not all(info.get("run_id") for info in servers.values()):
            return None  # a server that does not say (not Redis itself): unknown
        return ",".join(sorted(f"{info['run_id']}/{replication[name].get('master_replid')}"
                               for name, info in servers.items()))

    async def _info(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """INFO server and INFO replication by master ("" names the only one): one round
        trip (on a Cluster, both sections of every master at once)."""
        core = self._core
        client = core.client
        if isinstance(client, RedisCluster):
            servers, replication = await asyncio.gather(*(
                core.call(client.info(section, target_nodes=client.PRIMARIES), "incarnation")
                for section in ("server", "replication")))
            if "run_id" in servers:  # one master: its reply as it is
                return {"": servers}, {"": replication}
            return servers, replication
        pipe = client.pipeline(transaction=False)
        pipe.info("server")
        pipe.info("replication")
        server, replicas = await core.call(pipe.execute(), "incarnation")
        return {"": server}, {"": replicas}

    async def _reap_node(self, node: str, session_ttl: float) -> None:
        """Remove a node our keepalive claimed (found expired): its presence entries, then
        its liveness entry and claim, even when it refreshed that meanwhile (it was paused,
        not dead). The claim came first, so its keepalives while the reap runs report it
        rejoined (its clients' sessions and memberships may be going: it gives them back);
        the entry's removal last makes its next keepalive do so again, for the entries
        removed after it re-registered."""
        core = self._core
        keys = core.keys
        removed = await self._reap_clients(node, session_ttl)
        await core.call(core.scripts.reap_done(
            keys=[keys.nodes, keys.reaped, keys.node_reports], args=[node]), "reap")
        logger.warning("reaped node %s: %d stale presence entries removed", node, removed)

    async def _reap_clients(self, node: str, session_ttl: float) -> int:
        """Remove the presence entries (and seats) that still name `node`; their clients'
        sessions and group memberships end after `session_ttl` unless they come back."""
        core = self._core
        keys = core.keys
        removed = 0
        for bucket in range(keys.buckets):
            remaining = 1
            while remaining:
                reply = await core.call(core.scripts.reap_clients(
                    keys=[keys.presence(bucket), keys.node_set(bucket, node)],
                    args=[node, _REAP_BATCH, *core.seat_args()],
                ), "reap")
                remaining, clients = int(reply[0]), [text(cid) for cid in reply[1]]
                await core.follow_seats(_drops(reply[2]), "reap")
                removed += len(clients)
                await self._suspend(clients, session_ttl)
        return removed

    async def _suspend(self, clients: Sequence[str], session_ttl: float) -> None:
        """Put clients whose presence was removed on the away list: their sessions (and
        group memberships) end after `session_ttl` unless they come back."""
        if not clients:
            return
        core = self._core
        keys = core.keys
        if keys.spread:  # the sessions live in their clients' slots
            await suspend(core, clients, int(session_ttl * 1000))
            return
        await core.call(core.scripts.suspend(
            keys=[keys.away], args=[int(session_ttl * 1000), keys.session_prefix, *clients],
        ), "suspend")

    async def forget_predecessor(self, session_ttl: float = 0.0) -> int:
        """End what an earlier process under this node id left (it crashed, and this one
        started before its liveness entry expired, so no survivor reaps it): its presence
        and seats now, its clients' sessions and group memberships after `session_ttl`
        unless they come back. Return how many entries it removed. Call it before this
        process admits a connection."""
        removed = await self._reap_clients(self._core.node_id, session_ttl)
        if removed:
            logger.warning("node %s: forgot %d presence entries an earlier process left",
                           self._core.node_id, removed)
        return removed

    async def resync(self, local: Sequence[Presence], *, claims: Collection[str] = (),
                     session_ttl: float = 0.0, listed_at: float | None = None,
                     user_limit: UserLimit | None = None) -> Resynced:
        """Re-register local presence, oldest first (a claiming connection that is newer
        takes its client over, the other node's older socket is kicked; with `user_limit`
        a connection past it gets no seat, or takes a newer connection's: RESYNC) and
        forget entries this node no longer holds, except those made at or after
        `listed_at`; return client ids another node keeps and connections past the limit."""
        core = self._core
        keys = core.keys
        await self._prune_stale({presence.client_id for presence in local}, session_ttl,
                                listed_at)
        lost: list[str] = []
        over: list[tuple[str, str]] = []
        by_bucket: dict[int, list[Presence]] = {}
        for presence in sorted(local, key=lambda p: (since_us(p.since), p.client_id)):
            by_bucket.setdefault(keys.bucket_of(presence.client_id), []).append(presence)
        limit = user_limit.max_connections if user_limit is not None else 0
        seated = user_limit.seated if user_limit is not None else frozenset()
        close = pack_str(close_body(int(CloseCode.USER_LIMIT),
                                    user_limit.reason if user_limit is not None else ""))
        for bucket, entries in by_bucket.items():
            for start in range(0, len(entries), _RESYNC_BATCH):
                batch = entries[start:start + _RESYNC_BATCH]
                args: list[str | bytes | int] = [
                    core.node_id, keys.node_set_prefix(bucket),
                    keys.node_channel_prefix(bucket), core.publish_command, *core.seat_args(),
                    limit if keys.seats_here else 0, client_close_prefix(core.node_id), close]
                for presence in batch:
                    args += [presence.client_id, entry_of(presence),
                             kick_prefix(core.node_id, presence.client_id),
                             "1" if presence.client_id in claims else "0", _seat(presence),
                             "1" if presence.conn_id in seated else "0"]
                kept, refused, later = await core.call(core.scripts.resync(
                    keys=[keys.presence(bucket), keys.node_set(bucket, core.node_id)],
                    args=args,
                ), "resync")
                lost += sorted({text(cid) for cid in kept})
                pairs = [text(item) for item in refused]
                over += zip(pairs[::2], pairs[1::2], strict=True)
                if not keys.seats_here:  # (no limit there: config refuses one)
                    await core.follow_seats(
                        _drops(later) + _seat_sets(batch, set(lost)), "resync")
        return Resynced(tuple(lost), tuple(dict.fromkeys(over)))

    async def _prune_stale(self, local: set[str], session_ttl: float,
                           listed_at: float | None) -> None:
        core = self._core
        keys = core.keys
        cutoff = "" if listed_at is None else str(since_us(listed_at))
        for bucket in range(keys.buckets):
            key = keys.node_set(bucket, core.node_id)
            stale = [cid for cid in await core.scan_set(key, "resync") if cid not in local]
            for start in range(0, len(stale), _RESYNC_BATCH):
                reply = await core.call(core.scripts.prune(
                    keys=[keys.presence(bucket), key],
                    args=[core.node_id, cutoff, *core.seat_args(),
                          *stale[start:start + _RESYNC_BATCH]],
                ), "resync")
                removed = [text(cid) for cid in reply[0]]
                await core.follow_seats(_drops(reply[1]), "resync")
                await self._suspend(removed, session_ttl)
                if removed:
                    logger.info("forgot %d stale presence entries of node %s", len(removed),
                                core.node_id)

    async def unregister_node(self) -> None:
        """Remove our presence and liveness entry (clean shutdown)."""
        core = self._core
        keys = core.keys
        for bucket in range(keys.buckets):
            remaining = 1
            while remaining:
                _, remaining, later = await core.call(core.scripts.reap(
                    keys=[keys.presence(bucket), keys.node_set(bucket, core.node_id)],
                    args=[core.node_id, _REAP_BATCH, *core.seat_args()],
                ), "unregister_node")
                await core.follow_seats(_drops(later), "unregister_node")
        await core.call(core.scripts.reap_done(
            keys=[keys.nodes, keys.reaped, keys.node_reports], args=[core.node_id],
        ), "unregister_node")

    async def nodes(self) -> list[str]:
        """Live node ids by the Redis clock."""
        core = self._core
        reply = await core.call(core.scripts.live_nodes(keys=[core.keys.nodes], args=[]),
                                "nodes")
        return sorted(text(node) for node in reply)


    async def report(self, report: NodeReport) -> None:
        """HSET this node's report (one command per keepalive)."""
        core = self._core
        await core.call(core.client.hset(core.keys.node_reports, core.node_id,
                                         report.to_json()), "report")

    async def reports(self) -> list[NodeReport]:
        """HGETALL the reports; a malformed one is skipped."""
        core = self._core
        raw = await core.call(core.client.hgetall(core.keys.node_reports), "reports")
        parsed = (NodeReport.from_json(value) for value in raw.values())
        return sorted((r for r in parsed if r is not None), key=lambda r: r.node_id)


def _seat(presence: Presence) -> str:
    """The user seat of a local connection ('' for an anonymous one)."""
    return seat_of(presence, info_json(presence.info)) if presence.user_id else ""


def _seat_sets(batch: Sequence[Presence], lost: set[str]) -> list[str]:
    """SEATS operations recording the seats of the resynced connections we still hold."""
    ops: list[str] = []
    for presence in batch:
        if presence.user_id is not None and presence.client_id not in lost:
            ops += ["s", presence.user_id, presence.client_id, _seat(presence)]
    return ops


def _drops(later: Sequence[bytes | str]) -> list[str]:
    """SEATS operations dropping the (user, client, conn) triples a script left."""
    ops: list[str] = []
    items = [text(item) for item in later]
    for i in range(0, len(items) - 2, 3):
        ops += ["d", *items[i:i + 3]]
    return ops
