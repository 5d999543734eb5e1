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
import contextlib
import logging
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast
from urllib.parse import urlsplit

import msgpack
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stabilizer.backends import redis_scripts as lua
from stabilizer.backends.base import (
    History,
    Liveness,
    Presence,
    Registration,
    Sequenced,
    SessionState,
    Target,
)
from stabilizer.config import WebSocketConfig
from stabilizer.errors import BackendUnavailable, ConfigError, ConnectionLimitExceededError
from stabilizer.stats import BackendStats
from stabilizer.wire import WIRE_VERSION, Envelope, Kind, sequenced_prefix

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


def _client_for(config: WebSocketConfig) -> tuple[Redis | RedisCluster, list[Any]]:
    """A redis.asyncio client for config.redis_url (standalone, Cluster or Sentinel), and
    the other clients it made that must be closed with it."""
    url = config.redis_url
    assert url is not None
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(config, url)
    if config.redis_cluster:
        # per node; the backend keeps calls in flight below this (see RedisBackend._call)
        return RedisCluster.from_url(url, socket_connect_timeout=config.op_timeout,
                                     max_connections=config.redis_pool_size + 8), []
    # A blocking pool: a burst of connects waits for a connection (bounded by op_timeout)
    # instead of failing with "Too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=config.redis_pool_size,
        timeout=config.op_timeout,
        socket_connect_timeout=config.op_timeout,
        socket_timeout=None,
        # one immediate retry: a pooled connection that died with a Redis restart is
        # replaced transparently; op_timeout still bounds the whole call
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
    return Redis.from_pool(pool), []


def _sentinel_client(config: WebSocketConfig, url: str) -> tuple[Redis, list[Any]]:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``."""
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    password = parts.password
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ConfigError("redis+sentinel:// URLs need the service name: .../mymaster[/db]")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py lacks hints here
        hosts, socket_timeout=config.op_timeout,
        sentinel_kwargs={"socket_timeout": config.op_timeout},
    )
    master: Redis = sentinel.master_for(service, db=db, password=password,
                                        socket_connect_timeout=config.op_timeout,
                                        retry=Retry(NoBackoff(), 1))
    return master, list(sentinel.sentinels)


def parse_position(raw: bytes) -> tuple[int, str] | None:
    """Parse a stored ``offset|epoch`` baseline; None if malformed."""
    offset, _, epoch = raw.decode("utf-8", "replace").partition("|")
    try:
        return int(offset), epoch
    except ValueError:
        return None


_SCRIPT_NAMES: Final = {
    lua.REGISTER: "register", lua.UNREGISTER: "unregister", lua.ROUTE: "route",
    lua.KEEPALIVE: "keepalive", lua.SEQUENCE: "sequence", lua.HISTORY: "history",
    lua.MEMBERSHIP: "membership",
}


def _operation_name(coro: Any) -> str:
    """A short label for metrics: the script or command a coroutine runs."""
    frame_locals = getattr(getattr(coro, "cr_frame", None), "f_locals", {}) or {}
    owner = frame_locals.get("self")
    script = getattr(owner, "script", None)
    if isinstance(script, str | bytes):
        text = script.decode() if isinstance(script, bytes) else script
        return _SCRIPT_NAMES.get(text, "script")
    args = frame_locals.get("args")
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0].lower()
    return getattr(coro, "__name__", "command")


def _channel_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class ShardedSubscription:
    """Sharded pub/sub over a Redis Cluster: one connection per shard, read concurrently.

    redis-py's cluster pub/sub reads shards one after another, each with the full timeout,
    so a message on one shard can wait behind another shard's idle wait. Here every shard
    has its own reader task feeding one queue; a failing shard fails the whole subscription
    (the listener then resubscribes everything against the refreshed topology).
    """

    def __init__(self, cluster: RedisCluster, op_timeout: float) -> None:
        self._cluster = cluster
        self._op_timeout = op_timeout
        self._shards: dict[str, tuple[Redis, Any, asyncio.Task[None]]] = {}
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

    def _owner(self, channel: str) -> Any:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise BackendUnavailable(f"no cluster node serves channel {channel!r}")
        return node

    async def _shard(self, channel: str) -> Any:
        node = self._owner(channel)
        shard = self._shards.get(node.name)
        if shard is None:
            client = Redis(host=node.host, port=node.port,
                           socket_connect_timeout=self._op_timeout,
                           retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub()
            reader = asyncio.get_running_loop().create_task(
                self._pump(pubsub), name=f"stabilizer-shard-{node.name}")
            shard = self._shards[node.name] = (client, pubsub, reader)
        return shard[1]

    async def _pump(self, pubsub: Any) -> None:
        try:
            while True:
                if not pubsub.subscribed:  # nothing to read before the first SSUBSCRIBE
                    await asyncio.sleep(0.05)
                    continue
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._queue.put_nowait(message)
        except (RedisError, OSError) as exc:
            self._queue.put_nowait(exc)

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE each channel on the shard that owns its slot."""
        for channel in channels:
            pubsub = await self._shard(channel)
            await pubsub.ssubscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """SUNSUBSCRIBE a channel."""
        node = self._owner(channel)
        shard = self._shards.get(node.name)
        if shard is not None:
            await shard[1].sunsubscribe(channel)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message from any shard, or None after `timeout` seconds of silence."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def ping(self) -> None:
        """PING every shard connection (the replies arrive as messages)."""
        for _, pubsub, _ in list(self._shards.values()):
            await pubsub.ping()

    async def aclose(self) -> None:
        """Stop the readers and close every shard connection (bounded by op_timeout)."""
        shards, self._shards = list(self._shards.values()), {}
        readers = [reader for _, _, reader in shards]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers, timeout=self._op_timeout)
        for client, pubsub, _ in shards:
            with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.aclose()
                    await client.aclose()


class _ScriptBatcher:
    """Runs the calls of one script made in the same loop turn as one pipeline.

    The first call of a turn runs right away when it is alone; calls that arrive while a
    round trip is in flight are queued and sent together as soon as it returns. Results
    (and exceptions) go back to each caller; every call is bounded by op_timeout.
    """

    def __init__(self, backend: RedisBackend, script: Any, op: str) -> None:
        self._backend = backend
        self._script = script
        self._op = op
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._running = False

    async def submit(self, keys: list[str], args: list[Any]) -> Any:
        """Queue one call; return its result (or raise BackendUnavailable)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if not self._running:
            self._running = True
            self._backend.spawn_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._run(batch)
        finally:
            self._running = False

    async def _run(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        backend = self._backend
        try:
            if len(batch) == 1:
                keys, args, _ = batch[0]
                results: list[Any] = [
                    await backend.call(self._script(keys=keys, args=args), self._op)]
            else:
                pipe = backend.client.pipeline(transaction=False)
                for keys, args, _ in batch:
                    await self._script(keys=keys, args=args, client=pipe)
                results = await backend.call(pipe.execute(raise_on_error=False), self._op)
        except BackendUnavailable as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(BackendUnavailable(f"redis error: {result!r}"))
            else:
                future.set_result(result)


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
        pool_size: int = 64,
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
        self._reap_clients = client.register_script(lua.REAP_CLIENTS)
        self._prune = client.register_script(lua.PRUNE)
        self._suspend = client.register_script(lua.SUSPEND)
        self._load_session = client.register_script(lua.LOAD_SESSION)
        self._open_session = client.register_script(lua.OPEN_SESSION)
        self._end_session = client.register_script(lua.END_SESSION)
        self._sweep = client.register_script(lua.SWEEP)
        self._membership = client.register_script(lua.MEMBERSHIP)
        self._sequence = client.register_script(lua.SEQUENCE)
        self._history = client.register_script(lua.HISTORY)
        self._pubsub: Any = None
        self._groups: set[str] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self.stats = BackendStats()
        self._also_close: list[Any] = []
        self._helper_tasks: set[asyncio.Task[Any]] = set()
        self._lost_subscription = False
        self._in_flight = asyncio.Semaphore(pool_size)
        self._routes = _ScriptBatcher(self, self._route, "route")
        self.events = False
    @classmethod
    def from_config(cls, config: WebSocketConfig, client: Any = None) -> RedisBackend:
        """Build from config.redis_url, or wrap an existing redis.asyncio client."""
        owns = client is None
        extra: list[Any] = []
        if client is None:
            client, extra = _client_for(config)
        backend = cls(client, namespace=config.namespace,
                      presence_buckets=config.presence_buckets, owns_client=owns,
                      op_timeout=config.op_timeout, pool_size=config.redis_pool_size)
        backend._also_close = extra
        return backend

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

    @property
    def events_channel(self) -> str:
        """The channel of cluster events (join/leave/connect/disconnect)."""
        return f"{self._global}:events"

    def group_channel(self, group: str) -> str:
        """The channel of one group's messages."""
        return f"{self._global}:gc:{group}"

    def _k(self, kind: str, name: str | None = None) -> str:
        """A key in the namespace slot: ``{ns}:<kind>`` or ``{ns}:<kind>:<name>``."""
        return f"{self._global}:{kind}" if name is None else f"{self._global}:{kind}:{name}"

    def _event_args(self) -> list[str | bytes]:
        if not self.events:
            return ["", b""]
        head = [WIRE_VERSION, int(Kind.EVENT), self._node_id, None]
        prefix = b"\x97" + b"".join(msgpack.packb(item, use_bin_type=True) for item in head)
        return [self.events_channel, prefix]

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

    async def call(self, coro: Any, op: str | None = None) -> Any:
        """Await one Redis command under op_timeout; translate failures to ours."""
        return await self._call(coro, op)

    def spawn_task(self, coro: Any) -> None:
        """Run a short helper task (pipelined batches), keeping a reference until done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._helper_tasks.add(task)
        task.add_done_callback(self._helper_tasks.discard)

    async def _call(self, coro: Any, op: str | None = None) -> Any:
        """Await one Redis command under op_timeout; translate failures to ours.

        At most ``pool_size`` calls are in flight: beyond that they wait (within
        op_timeout) instead of making the client's pool raise "Too many connections".
        """
        # hot paths name their operation; the rest is labelled by looking at the coroutine
        name = op or _operation_name(coro)
        started = time.perf_counter()
        awaited = False
        try:
            async with asyncio.timeout(self._op_timeout), self._in_flight:
                awaited = True
                result = await coro
        except (RedisError, OSError, TimeoutError) as exc:
            self._available = False
            self.stats.observe(name, time.perf_counter() - started, False)
            raise BackendUnavailable(f"redis unavailable: {exc or type(exc).__name__}") from exc
        finally:
            if not awaited:  # timed out or cancelled while waiting for a slot
                coro.close()
        self.stats.observe(name, time.perf_counter() - started, True)
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
            for client in [self._client, *self._also_close]:
                try:
                    await client.aclose()
                except (RedisError, OSError):
                    logger.debug("error closing redis client", exc_info=True)

    # ------------------------------------------------------------------ pub/sub

    async def deliveries(self) -> AsyncIterator[bytes]:
        """Subscribe to the broadcast channel and this node's channels; yield envelopes."""
        channels = [self.broadcast_channel] + [
            self._node_channel(b, self._node_id) for b in range(self._buckets)
        ] + [self.group_channel(g) for g in sorted(self._groups)]
        if self._buckets > 1:  # sequenced direct messages use the namespace slot
            channels.append(f"{self._global}:n:{self._node_id}")
        if self.events:
            channels.append(self.events_channel)
        if self._cluster and self._lost_subscription:
            await self._refresh_topology()
        pubsub: Any = (
            ShardedSubscription(cast(RedisCluster, self._client), self._op_timeout)
            if self._cluster else self._client.pubsub()
        )
        self._pubsub = pubsub
        try:
            try:
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.subscribe(*channels)
            except (RedisError, OSError, TimeoutError) as exc:
                self._available = False
                raise BackendUnavailable(f"subscribe failed: {exc!r}") from exc
            async for data in self._read(pubsub, len(channels)):
                yield data
        finally:
            self._subscribed.clear()
            self._lost_subscription = True  # the next subscription re-reads the topology
            self._pubsub = None
            try:
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.aclose()
            except (RedisError, OSError, RuntimeError, TimeoutError):
                logger.debug("error closing pubsub", exc_info=True)

    async def _read(self, pubsub: Any, channels: int) -> AsyncIterator[bytes]:
        """Yield message payloads; ping when idle and fail if Redis stays silent."""
        awaiting_pong = False
        confirmed = 0
        seen: set[bytes] = set()
        while True:
            try:
                message = await pubsub.get_message(timeout=_IDLE_PING)
                if message is None:  # nothing at all within the idle period
                    if awaiting_pong:
                        raise BackendUnavailable(
                            "redis did not answer a ping on the pub/sub connection"
                        )
                    await self._ping_pubsub(pubsub)
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
                channel = _channel_bytes(message.get("channel"))
                if channel in seen:
                    # redis-py reconnected and resubscribed by itself: whatever was published
                    # in between is lost to pub/sub. Report it so the node catches up.
                    raise BackendUnavailable("pub/sub connection was re-established")
                seen.add(channel)
                waiter = self._confirmations.pop(channel, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                confirmed += 1
                if confirmed == channels:
                    self._available = True
                    self._lost_subscription = False
                    self._subscribed.set()
                    logger.info("node %s subscribed to %d channels", self._node_id, channels)
            elif kind in ("unsubscribe", "sunsubscribe"):
                seen.discard(_channel_bytes(message.get("channel")))

    async def _refresh_topology(self) -> None:
        """After losing a shard (a failover), re-read which node serves which slot: the
        cached slot map would point the new subscription at the dead master."""
        try:
            async with asyncio.timeout(self._op_timeout):
                await cast(RedisCluster, self._client).nodes_manager.initialize()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"cluster topology unavailable: {exc!r}") from exc

    async def _ping_pubsub(self, pubsub: Any) -> None:
        async with asyncio.timeout(self._op_timeout):
            await pubsub.ping()

    async def publish(self, envelope: bytes) -> int:
        """PUBLISH once to every node; return how many *other* nodes received it."""
        if self._cluster:
            receivers = await self._call(
                self._client.spublish(self.broadcast_channel, envelope), "publish")
        else:
            receivers = await self._call(
                self._client.publish(self.broadcast_channel, envelope), "publish")
        return max(int(receivers) - (1 if self._subscribed.is_set() else 0), 0)

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """One script: look up the owner and publish to its channel.

        Concurrent calls made in the same event-loop turn share one pipelined round trip
        (standalone Redis), so many senders cost far fewer socket reads and writes.
        """
        bucket = self._bucket(client_id)
        keys = [self._presence_key(bucket)]
        args: list[Any] = [client_id, f"{self._tag(bucket)}:n:", envelope, self._publish_cmd]
        if self._cluster:
            received = await self._call(self._route(keys=keys, args=args), "route")
        else:
            received = await self._routes.submit(keys, args)
        return int(received) > 0

    # ------------------------------------------------------------------ presence

    def _entry(self, presence: Presence) -> str:
        return f"{presence.node_id}|{presence.conn_id}|{int(presence.since * 1000)}"

    async def register(self, presence: Presence, *, max_cluster: int | None) -> Registration:
        """One script: record presence, enforce the limit, kick a previous owner node.

        Raises:
            ConfigError: a cluster limit with presence spread over several buckets.
        """
        if max_cluster is not None and self._buckets > 1:
            raise ConfigError("max_cluster_connections needs presence_buckets=1")
        bucket = self._bucket(presence.client_id)
        tag = self._tag(bucket)
        status, previous = await self._call(self._register(
            keys=[self._presence_key(bucket), self._node_set(bucket, presence.node_id)],
            args=[presence.client_id, self._entry(presence), presence.node_id,
                  max_cluster or 0, f"{tag}:nc:", f"{tag}:n:",
                  kick_prefix(presence.node_id, presence.client_id), self._publish_cmd],
        ), "register")
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
        ), "unregister")
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

    async def restore_token(self, nonce: str) -> None:
        """DEL the consumed-token marker."""
        await self._call(self._client.delete(f"{self._global}:tok:{nonce}"))

    async def shared_secret(self) -> bytes:
        """The key every node signs with: created once with SET NX, then read."""
        key = f"{self._global}:secret"
        await self._call(self._client.set(key, secrets.token_hex(32).encode(), nx=True))
        value = await self._call(self._client.get(key))
        if not value:
            raise BackendUnavailable("shared token key vanished between SET NX and GET")
        return cast(bytes, value)

    # ------------------------------------------------------------------ liveness

    async def keepalive(self, node_ttl: float, session_ttl: float = 0.0) -> Liveness:
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
            await self._reap_node(node, session_ttl)
            reaped.append(node)
        return Liveness(tuple(reaped), bool(added))

    async def _reap_node(self, node: str, session_ttl: float) -> None:
        removed = 0
        for bucket in range(self._buckets):
            remaining = 1
            while remaining:
                reply = await self._call(self._reap_clients(
                    keys=[self._presence_key(bucket), self._node_set(bucket, node)],
                    args=[node, _REAP_BATCH],
                ))
                remaining, clients = int(reply[0]), reply[1:]
                removed += len(clients)
                if clients:  # their sessions (and group memberships) end after session_ttl
                    await self._call(self._suspend(
                        keys=[self._k("away")],
                        args=[int(session_ttl * 1000), self._k("s", ""), *clients],
                    ))
        await self._call(self._forget_node(keys=[f"{self._global}:nodes"], args=[node]))
        logger.warning("reaped node %s: %d stale presence entries removed", node, removed)

    async def resync(self, local: Sequence[Presence]) -> list[str]:
        """Re-register local presence and forget entries this node no longer holds; return
        client ids another node now holds."""
        await self._prune_stale({presence.client_id for presence in local})
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

    async def _prune_stale(self, local: set[str]) -> None:
        for bucket in range(self._buckets):
            key = self._node_set(bucket, self._node_id)
            stale: list[str] = []
            cursor = 0
            while True:
                cursor, members = await self._call(
                    self._client.sscan(key, cursor=cursor, count=_RESYNC_BATCH))
                stale += [cid for cid in map(_text, members) if cid not in local]
                if int(cursor) == 0:
                    break
            for start in range(0, len(stale), _RESYNC_BATCH):
                removed = await self._call(self._prune(
                    keys=[self._presence_key(bucket), key],
                    args=[self._node_id, *stale[start:start + _RESYNC_BATCH]],
                ))
                if removed:
                    logger.info("forgot %d stale presence entries of node %s", removed,
                                self._node_id)

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


    # ------------------------------------------------------------------ groups

    async def publish_group(self, group: str, envelope: bytes) -> int:
        """PUBLISH to the group's channel; return how many other nodes received it."""
        channel = self.group_channel(group)
        if self._cluster:
            receivers = await self._call(self._client.spublish(channel, envelope), "publish")
        else:
            receivers = await self._call(self._client.publish(channel, envelope), "publish")
        mine = 1 if group in self._groups and self._subscribed.is_set() else 0
        return max(int(receivers) - mine, 0)

    async def _change_membership(self, client_id: str, group: str, action: str) -> bool:
        changed = await self._call(self._membership(
            keys=[self._k("g", group), self._k("cg", client_id), self._k("s", client_id),
                  self._k("hm", f"g:{group}")],
            args=[client_id, group, *self._event_args(), self._node_id, self._publish_cmd,
                  action],
        ), "membership")
        return bool(changed)

    async def join_group(self, client_id: str, group: str) -> bool:
        """SADD to the group and the client's group set (one script)."""
        return await self._change_membership(client_id, group, "join")

    async def leave_group(self, client_id: str, group: str) -> bool:
        """SREM from the group and the client's group set (one script)."""
        return await self._change_membership(client_id, group, "leave")

    async def _members(self, key: str) -> list[str]:
        found: list[str] = []
        cursor = 0
        while True:
            cursor, batch = await self._call(self._client.sscan(key, cursor=cursor, count=500))
            found.extend(_text(member) for member in batch)
            if int(cursor) == 0:
                return sorted(found)

    async def group_members(self, group: str) -> list[str]:
        """SSCAN the group's member set."""
        return await self._members(self._k("g", group))

    async def client_groups(self, client_id: str) -> list[str]:
        """SSCAN the client's group set."""
        return await self._members(self._k("cg", client_id))

    async def subscribe_group(self, group: str) -> None:
        """Add the group channel to this node's subscription; return once Redis confirmed
        it, so that a history read that follows cannot miss a message in between."""
        self._groups.add(group)
        pubsub = self._pubsub
        if pubsub is not None and self._subscribed.is_set():
            channel = self.group_channel(group)
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations[channel.encode()] = confirmed
            try:
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.subscribe(channel)
                    await confirmed
            except (RedisError, OSError, TimeoutError) as exc:
                self._confirmations.pop(channel.encode(), None)
                # the listener resubscribes everything in self._groups when it reconnects
                raise BackendUnavailable(f"subscribe to group failed: {exc!r}") from exc

    async def unsubscribe_group(self, group: str) -> None:
        """Remove the group channel from this node's subscription."""
        self._groups.discard(group)
        pubsub = self._pubsub
        if pubsub is not None and self._subscribed.is_set():
            try:
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.unsubscribe(self.group_channel(group))
            except (RedisError, OSError, TimeoutError) as exc:
                raise BackendUnavailable(f"unsubscribe from group failed: {exc!r}") from exc

    # ------------------------------------------------------------------ history

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float, meta_ttl: float
    ) -> Sequenced:
        """One script: next offset, XADD (trimmed), PUBLISH the complete envelope."""
        stream = target.stream
        client = target.name if target.kind == "client" else ""
        if target.kind == "all":
            channel = self.broadcast_channel
        elif target.kind == "group":
            channel = self.group_channel(target.name)
        else:
            channel = ""
        owner = ""
        if client and self._buckets > 1:
            # presence lives in another slot than the stream: look the owner up first
            located = await self.locate(client)
            owner = located.node_id if located is not None else "-"
        presence_key = self._k("p")  # with buckets > 1 this key stays empty (same slot)
        reply = await self._call(self._sequence(
            keys=[self._k("h", stream), self._k("hm", stream), presence_key,
                  self._k("s", client)],
            args=[target.kind, sequenced_prefix(envelope), size, int(ttl * 1000),
                  int(max(ttl, meta_ttl) * 1000), secrets.token_urlsafe(6),
                  self._publish_cmd, channel, client, f"{self._global}:n:", owner],
        ), "sequence")
        return Sequenced(int(reply[0]), _text(reply[1]), int(reply[2]))

    async def history(self, stream: str, after: int, epoch: str) -> History:
        """One script: check the epoch and coverage, return the entries after `after`."""
        reply = await self._call(self._history(
            keys=[self._k("h", stream), self._k("hm", stream)], args=[after, epoch],
        ))
        return History([bytes(raw) for raw in reply[1:]], bool(int(reply[0])))

    # ------------------------------------------------------------------ sessions

    async def load_session(self, client_id: str) -> SessionState | None:
        """One script: the session's groups and user data, if it exists."""
        reply = await self._call(self._load_session(
            keys=[self._k("s", client_id), self._k("cg", client_id), self._k("away")],
            args=[client_id],
        ))
        if not int(reply[0]):
            return None
        groups = sorted(_text(g) for g in reply[1])
        user_data: dict[str, bytes] = {}
        baselines: dict[str, tuple[int, str]] = {}
        pairs = reply[2:]
        for i in range(0, len(pairs) - 1, 2):
            name, value = _text(pairs[i]), bytes(pairs[i + 1])
            if name.startswith("u:"):
                user_data[name[2:]] = value
            elif (position := parse_position(value)) is not None:
                baselines[name[2:]] = position
        return SessionState(groups, user_data, baselines)

    async def open_session(self, client_id: str, *, fresh: bool) -> None:
        """Create the session hash (no expiry), take the client off the away list, and for
        a fresh session record its streams' baselines."""
        await self._call(self._open_session(
            keys=[self._k("s", client_id), self._k("away"), self._k("hm", "all"),
                  self._k("hm", f"c:{client_id}")],
            args=[client_id, "1" if fresh else "0"],
        ))

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """HSET one user-data field."""
        await self._call(self._client.hset(self._k("s", client_id), f"u:{key}", value))

    async def suspend_session(self, client_id: str, ttl: float) -> None:
        """Expire the session after `ttl` and put the client on the away list."""
        await self._call(self._suspend(
            keys=[self._k("away")], args=[int(ttl * 1000), self._k("s", ""), client_id],
        ))

    async def end_session(self, client_id: str) -> list[str]:
        """One script: leave every group, drop the session."""
        reply = await self._call(self._end_session(
            keys=[self._k("cg", client_id), self._k("s", client_id), self._k("away")],
            args=[client_id, self._k("g", ""), *self._event_args(), self._node_id,
                  self._publish_cmd],
        ))
        return sorted(_text(g) for g in reply)

    async def sweep_sessions(self, limit: int = 100) -> list[str]:
        """One script: end the sessions whose time ran out."""
        if self._buckets != 1:
            return await self._sweep_across_slots(limit)
        reply = await self._call(self._sweep(
            keys=[self._k("away"), self._presence_key(0)],
            args=[limit, self._k("cg", ""), self._k("g", ""), self._k("s", "")],
        ))
        return [_text(cid) for cid in reply]


    async def _sweep_across_slots(self, limit: int) -> list[str]:
        """The sweep when presence lives in other hash slots: a few round trips per client
        (sessions end rarely; no script may span slots)."""
        now_ms = int(time.time() * 1000)
        due = await self._call(self._client.zrangebyscore(
            self._k("away"), "-inf", now_ms, start=0, num=limit
        ))
        ended = []
        for raw in due:
            client_id = _text(raw)
            await self._call(self._client.zrem(self._k("away"), client_id))
            if await self.locate(client_id) is None:
                await self.end_session(client_id)
                ended.append(client_id)
        return ended


__all__ = ["RedisBackend", "kick_prefix", "parse_entry"]
