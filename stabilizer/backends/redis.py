"""Redis backend: presence hashes, Lua scripts, pub/sub. All redis code lives here.

Keys (``{ns}`` is the namespace in a hash tag, so standalone scripts stay on one slot):

- ``{ns}:p`` hash: client_id -> ``node|conn|since_ms``; ``{ns}:nc:<node>`` set: a node's
  clients (for reaping); with ``presence_buckets`` > 1 both live per bucket under
  ``{ns:<b>}`` so presence is spread over slots (Redis Cluster).
- ``{ns}:nodes`` zset: node_id -> liveness deadline (ms, Redis clock).
- ``{ns}:tok:<nonce>`` consumed-token marker (expires with the token); ``{ns}:secret``.
- channels: ``{ns}:all`` broadcasts; ``{ns}:n:<node>`` (per bucket) direct messages/kicks.

Every operation is one round trip: a script or a single command. Client ids are only hash
fields and set members, never part of a key or channel, so any string is safe.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

import msgpack
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stabilizer.backends import redis_scripts as lua
from stabilizer.backends.base import Liveness, Presence, Registration
from stabilizer.config import WebSocketConfig
from stabilizer.errors import BackendUnavailable, ConnectionLimitExceededError
from stabilizer.wire import WIRE_VERSION, Kind

logger = logging.getLogger(__name__)

_REAP_BATCH: Final = 500
_RESYNC_BATCH: Final = 200
_IDLE_PING: Final = 5.0


def kick_prefix(origin: str, client_id: str) -> bytes:
    """The msgpack bytes of a KICK envelope up to its last field (the old conn id, which the
    register script appends, as only Redis knows it)."""
    head = [WIRE_VERSION, int(Kind.KICK), origin, client_id, None, None]
    return b"\x97" + b"".join(msgpack.packb(item, use_bin_type=True) for item in head)


def parse_entry(client_id: str, raw: bytes | str) -> Presence | None:
    """Parse ``node|conn|since_ms``; None for anything malformed."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    parts = text.split("|")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    try:
        since = int(parts[2]) / 1000
    except ValueError:
        return None
    return Presence(client_id, parts[0], parts[1], since)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class RedisBackend:
    """A node's view of the shared Redis (standalone, or Cluster with sharded pub/sub)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        namespace: str = "stabilizer",
        presence_buckets: int = 1,
        owns_client: bool = False,
        op_timeout: float = 2.0,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._ns = namespace
        self._buckets = presence_buckets
        self._op_timeout = op_timeout
        self._cluster = isinstance(client, RedisCluster)
        self._publish_cmd = "SPUBLISH" if self._cluster else "PUBLISH"
        self._node_id = ""
        self._available = False
        self._subscribed = asyncio.Event()
        self._register = client.register_script(lua.REGISTER)
        self._unregister = client.register_script(lua.UNREGISTER)
        self._route = client.register_script(lua.ROUTE)
        self._keepalive = client.register_script(lua.KEEPALIVE)
        self._reap = client.register_script(lua.REAP_BATCH)
        self._forget_node = client.register_script(lua.FORGET_NODE)
        self._live_nodes = client.register_script(lua.LIVE_NODES)
        self._resync = client.register_script(lua.RESYNC)

    @classmethod
    def from_config(cls, config: WebSocketConfig, client: Any = None) -> RedisBackend:
        """Build from config.redis_url, or wrap an existing redis.asyncio client."""
        owns = client is None
        if client is None:
            assert config.redis_url is not None
            client = Redis.from_url(
                config.redis_url,
                socket_connect_timeout=config.op_timeout,
                socket_timeout=None,
                # one immediate retry: a pooled connection that died with a Redis restart
                # is replaced transparently; op_timeout still bounds the whole call
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
        return cls(client, namespace=config.namespace, presence_buckets=config.presence_buckets,
                   owns_client=owns, op_timeout=config.op_timeout)

    # ------------------------------------------------------------------ keys

    def _tag(self, bucket: int) -> str:
        return f"{{{self._ns}}}" if self._buckets == 1 else f"{{{self._ns}:{bucket}}}"

    def _bucket(self, client_id: str) -> int:
        if self._buckets == 1:
            return 0
        return zlib.crc32(client_id.encode("utf-8", "surrogatepass")) % self._buckets

    def _presence_key(self, bucket: int) -> str:
        return f"{self._tag(bucket)}:p"

    def _node_set(self, bucket: int, node_id: str) -> str:
        return f"{self._tag(bucket)}:nc:{node_id}"

    def _node_channel(self, bucket: int, node_id: str) -> str:
        return f"{self._tag(bucket)}:n:{node_id}"

    @property
    def _global(self) -> str:
        return f"{{{self._ns}}}"

    @property
    def broadcast_channel(self) -> str:
        """The channel every node subscribes to for broadcasts."""
        return f"{self._global}:all"

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        """``redis`` or ``redis-cluster``."""
        return "redis-cluster" if self._cluster else "redis"

    @property
    def is_shared(self) -> bool:
        """Always True: other nodes share this Redis."""
        return True

    @property
    def available(self) -> bool:
        """False after a command failed, until one succeeds again."""
        return self._available

    @property
    def subscribed(self) -> asyncio.Event:
        """Set once every channel's subscription is confirmed; cleared when lost."""
        return self._subscribed

    @property
    def client(self) -> Redis | RedisCluster:
        """The underlying redis.asyncio client."""
        return self._client

    async def _call(self, coro: Any) -> Any:
        """Await one Redis command under op_timeout; translate failures to ours."""
        try:
            async with asyncio.timeout(self._op_timeout):
                result = await coro
        except ConnectionLimitExceededError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._available = False
            raise BackendUnavailable(f"redis unavailable: {exc or type(exc).__name__}") from exc
        self._available = True
        return result

    # ------------------------------------------------------------------ lifecycle

    async def open(self, node_id: str) -> None:
        """Check the connection and announce this node."""
        self._node_id = node_id
        await self._call(self._client.ping())

    async def aclose(self) -> None:
        """Close the client if this backend created it."""
        self._available = False
        if self._owns_client:
            try:
                await self._client.aclose()
            except (RedisError, OSError):
                logger.debug("error closing redis client", exc_info=True)

    # ------------------------------------------------------------------ pub/sub

    async def deliveries(self) -> AsyncIterator[bytes]:
        """Subscribe to the broadcast channel and this node's channels; yield envelopes."""
        channels = [self.broadcast_channel] + [
            self._node_channel(b, self._node_id) for b in range(self._buckets)
        ]
        pubsub = self._client.pubsub()
        try:
            try:
                async with asyncio.timeout(self._op_timeout):
                    if self._cluster:
                        await pubsub.ssubscribe(*channels)
                    else:
                        await pubsub.subscribe(*channels)
            except (RedisError, OSError, TimeoutError) as exc:
                self._available = False
                raise BackendUnavailable(f"subscribe failed: {exc!r}") from exc
            async for data in self._read(pubsub, len(channels)):
                yield data
        finally:
            self._subscribed.clear()
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py lacks hints
            except (RedisError, OSError, RuntimeError):
                logger.debug("error closing pubsub", exc_info=True)

    async def _read(self, pubsub: Any, channels: int) -> AsyncIterator[bytes]:
        """Yield message payloads; ping when idle and fail if Redis stays silent."""
        awaiting_pong = False
        confirmed = 0
        while True:
            try:
                message = await pubsub.get_message(timeout=_IDLE_PING)
                if message is None:  # nothing at all within the idle period
                    if awaiting_pong:
                        raise BackendUnavailable(
                            "redis did not answer a ping on the pub/sub connection"
                        )
                    async with asyncio.timeout(self._op_timeout):
                        await pubsub.ping()
                    awaiting_pong = True
                    continue
            except (RedisError, OSError, TimeoutError) as exc:
                self._available = False
                raise BackendUnavailable(f"pub/sub connection lost: {exc!r}") from exc
            awaiting_pong = False  # any reply (message, pong, confirmation) proves liveness
            kind = message.get("type")
            if kind in ("message", "smessage"):
                data = message.get("data")
                if isinstance(data, bytes):
                    yield data
            elif kind in ("subscribe", "ssubscribe"):
                confirmed += 1
                if confirmed == channels:
                    self._available = True
                    self._subscribed.set()
                    logger.info("node %s subscribed to %d channels", self._node_id, channels)

    async def publish(self, envelope: bytes) -> int:
        """PUBLISH once to every node; return how many *other* nodes received it."""
        if self._cluster:
            receivers = await self._call(self._client.spublish(self.broadcast_channel, envelope))
        else:
            receivers = await self._call(self._client.publish(self.broadcast_channel, envelope))
        return max(int(receivers) - (1 if self._subscribed.is_set() else 0), 0)

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """One script: look up the owner and publish to its channel."""
        bucket = self._bucket(client_id)
        received = await self._call(self._route(
            keys=[self._presence_key(bucket)],
            args=[client_id, f"{self._tag(bucket)}:n:", envelope, self._publish_cmd],
        ))
        return int(received) > 0

    # ------------------------------------------------------------------ presence

    def _entry(self, presence: Presence) -> str:
        return f"{presence.node_id}|{presence.conn_id}|{int(presence.since * 1000)}"

    async def register(self, presence: Presence, *, max_cluster: int | None) -> Registration:
        """One script: record presence, enforce the limit, kick a previous owner node."""
        bucket = self._bucket(presence.client_id)
        tag = self._tag(bucket)
        status, previous = await self._call(self._register(
            keys=[self._presence_key(bucket), self._node_set(bucket, presence.node_id)],
            args=[presence.client_id, self._entry(presence), presence.node_id,
                  max_cluster or 0, f"{tag}:nc:", f"{tag}:n:",
                  kick_prefix(presence.node_id, presence.client_id), self._publish_cmd],
        ))
        if int(status) == -1:
            raise ConnectionLimitExceededError(
                f"cluster connection limit ({max_cluster}) reached"
            )
        prev = parse_entry(presence.client_id, previous) if previous else None
        return Registration(prev)

    async def unregister(self, client_id: str, conn_id: str) -> bool:
        """Remove presence if it still names `conn_id`."""
        bucket = self._bucket(client_id)
        removed = await self._call(self._unregister(
            keys=[self._presence_key(bucket), self._node_set(bucket, self._node_id)],
            args=[client_id, conn_id],
        ))
        return bool(removed)

    async def count(self) -> int:
        """HLEN over the presence buckets."""
        total = 0
        for bucket in range(self._buckets):
            total += int(await self._call(self._client.hlen(self._presence_key(bucket))))
        return total

    async def scan(self, batch: int = 500) -> AsyncIterator[Presence]:
        """HSCAN each presence bucket, `batch` entries per round trip."""
        for bucket in range(self._buckets):
            key = self._presence_key(bucket)
            cursor = 0
            while True:
                cursor, entries = await self._call(
                    self._client.hscan(key, cursor=cursor, count=batch)
                )
                for field, value in entries.items():
                    presence = parse_entry(_text(field), value)
                    if presence is not None:
                        yield presence
                if int(cursor) == 0:
                    break

    async def locate(self, client_id: str) -> Presence | None:
        """HGET the client's entry."""
        raw = await self._call(
            self._client.hget(self._presence_key(self._bucket(client_id)), client_id)
        )
        return None if raw is None else parse_entry(client_id, raw)

    # ------------------------------------------------------------------ tokens

    async def consume_token(self, nonce: str, expires_at: float) -> bool:
        """SET NX with the token's expiry: the first caller wins, cluster-wide."""
        ttl_ms = max(int((expires_at - time.time()) * 1000), 1) + 1000
        created = await self._call(
            self._client.set(f"{self._global}:tok:{nonce}", b"1", nx=True, px=ttl_ms)
        )
        return bool(created)

    async def shared_secret(self) -> bytes:
        """The key every node signs with: created once with SET NX, then read."""
        key = f"{self._global}:secret"
        await self._call(self._client.set(key, secrets.token_hex(32).encode(), nx=True))
        value = await self._call(self._client.get(key))
        if not value:
            raise BackendUnavailable("shared token key vanished between SET NX and GET")
        return cast(bytes, value)

    # ------------------------------------------------------------------ liveness

    async def keepalive(self, node_ttl: float) -> Liveness:
        """Refresh our deadline and reap nodes whose deadline passed.

        ``rejoined`` is True when our own entry had vanished (Redis restarted empty, or we
        were reaped after a long pause): the caller must re-register its presence.
        """
        reply = await self._call(self._keepalive(
            keys=[f"{self._global}:nodes"], args=[self._node_id, int(node_ttl * 1000)],
        ))
        added, expired = int(reply[0]), [_text(node) for node in reply[1:]]
        reaped: list[str] = []
        for node in expired:
            if node == self._node_id:
                continue
            await self._reap_node(node)
            reaped.append(node)
        return Liveness(tuple(reaped), bool(added))

    async def _reap_node(self, node: str) -> None:
        removed = 0
        for bucket in range(self._buckets):
            remaining = 1
            while remaining:
                got, remaining = await self._call(self._reap(
                    keys=[self._presence_key(bucket), self._node_set(bucket, node)],
                    args=[node, _REAP_BATCH],
                ))
                removed += int(got)
        await self._call(self._forget_node(keys=[f"{self._global}:nodes"], args=[node]))
        logger.warning("reaped node %s: %d stale presence entries removed", node, removed)

    async def resync(self, local: Sequence[Presence]) -> list[str]:
        """Re-register local presence; return client ids another node now holds."""
        lost: list[str] = []
        by_bucket: dict[int, list[Presence]] = {}
        for presence in local:
            by_bucket.setdefault(self._bucket(presence.client_id), []).append(presence)
        for bucket, entries in by_bucket.items():
            for start in range(0, len(entries), _RESYNC_BATCH):
                args: list[str] = [self._node_id]
                for presence in entries[start:start + _RESYNC_BATCH]:
                    args += [presence.client_id, self._entry(presence)]
                reply = await self._call(self._resync(
                    keys=[self._presence_key(bucket), self._node_set(bucket, self._node_id)],
                    args=args,
                ))
                lost += [_text(cid) for cid in reply]
        return lost

    async def unregister_node(self) -> None:
        """Remove our presence and liveness entry (clean shutdown)."""
        for bucket in range(self._buckets):
            remaining = 1
            while remaining:
                _, remaining = await self._call(self._reap(
                    keys=[self._presence_key(bucket), self._node_set(bucket, self._node_id)],
                    args=[self._node_id, _REAP_BATCH],
                ))
        await self._call(self._client.zrem(f"{self._global}:nodes", self._node_id))

    async def nodes(self) -> list[str]:
        """Live node ids by the Redis clock."""
        reply = await self._call(self._live_nodes(keys=[f"{self._global}:nodes"], args=[]))
        return sorted(_text(node) for node in reply)


__all__ = ["RedisBackend", "kick_prefix", "parse_entry"]
