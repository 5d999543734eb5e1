"""Envelopes between nodes over Redis pub/sub: the node's subscription, broadcasts, direct
routing to a client's node, and the group channels the node follows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.exceptions import RedisError

from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.sharded import ShardedSubscription
from stabilizer.errors import BackendUnavailable

logger = logging.getLogger(__name__)

_IDLE_PING: Final = 5.0
#: What a command on the pub/sub connection raises when it fails. redis-py also raises
#: AttributeError or RuntimeError when the connection is closed or re-established under the
#: command (the listener closing a lost subscription while a group is followed or left).
_PUBSUB_FAILURES: Final = (RedisError, OSError, TimeoutError, AttributeError, RuntimeError)


def _channel_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class RedisRouting:
    """One subscription per node: the broadcast channel, the node's own channels, the
    channels of the groups it has local members of, and (with events) the events channel.

    Pub/sub is at-most-once. A lost subscription ends deliveries() with
    BackendUnavailable; the caller subscribes again (and, with history, catches up). Lost
    includes a channel Redis unsubscribed the node from by itself while the connection
    stays up: on a Cluster a shard that stops serving a slot (a graceful failover made its
    master a replica, or the slot migrated) pushes `sunsubscribe` for that slot's channels.
    """

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._subscribed = asyncio.Event()
        self._pubsub: Any = None
        self._groups: set[str] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        # channels this node asked to unsubscribe from, by unconfirmed requests: their
        # confirmations are ours, any other unsubscribe from a wanted channel is Redis's
        self._leaving: dict[bytes, int] = {}
        self._lost_subscription = False
        # held by a group's (un)subscribe on the pub/sub connection: closing the subscription
        # waits for it, or the connection would go back to the pool while still in use
        self._commands = asyncio.Lock()
        self._routes = ScriptBatcher(core, core.scripts.route, "route", hold=False)

    @property
    def subscribed(self) -> asyncio.Event:
        """Set once every channel's subscription is confirmed; cleared when lost."""
        return self._subscribed

    def follows(self, group: str) -> bool:
        """True while this node receives `group`'s channel."""
        return group in self._groups and self._subscribed.is_set()

    def _channels(self) -> list[str]:
        keys, node = self._core.keys, self._core.node_id
        channels = [keys.broadcast_channel]
        channels += [keys.node_channel(b, node) for b in range(keys.buckets)]
        channels += [keys.group_channel(g) for g in sorted(self._groups)]
        if keys.buckets > 1:  # sequenced direct messages use the namespace slot
            channels.append(keys.sequenced_direct_prefix + node)
        if self._core.events:
            channels.append(keys.events_channel)
        return channels

    async def deliveries(self) -> AsyncIterator[bytes]:
        """Subscribe to every channel of this node; yield envelopes."""
        core = self._core
        core.check_open()
        channels = self._channels()
        if core.cluster and self._lost_subscription:
            await self._refresh_topology()
        pubsub: Any = ShardedSubscription(core) if core.cluster else core.client.pubsub()
        self._pubsub = pubsub
        try:
            try:
                async with asyncio.timeout(core.op_timeout):
                    await pubsub.subscribe(*channels)
            except (RedisError, OSError, TimeoutError) as exc:
                core.available = False
                raise BackendUnavailable(f"subscribe failed: {exc!r}") from exc
            async for data in self._read(pubsub, len(channels)):
                yield data
        finally:
            self._subscribed.clear()
            self._lost_subscription = True  # the next subscription re-reads the topology
            self._pubsub = None
            for waiter in self._confirmations.values():  # their subscription is gone
                if not waiter.done():
                    waiter.set_result(None)
            self._confirmations.clear()
            self._leaving.clear()
            # A group's command in flight may be re-establishing this very connection;
            # closing hands it back to the client's pool, where a script would then read the
            # socket that command reads. It ends within op_timeout: wait for it.
            async with self._commands:
                try:
                    async with asyncio.timeout(core.op_timeout):
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
                            "redis did not answer a ping on the pub/sub connection")
                    async with asyncio.timeout(self._core.op_timeout):
                        await pubsub.ping()
                    awaiting_pong = True
                    continue
            except _PUBSUB_FAILURES as exc:
                self._core.available = False
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
                    channels += await self._catch_up(pubsub, seen)
                if confirmed == channels:
                    self._on_subscribed(channels)
            elif kind in ("unsubscribe", "sunsubscribe"):
                channel = _channel_bytes(message.get("channel"))
                seen.discard(channel)
                if not self._left(channel) and channel in self._wanted():
                    # Redis dropped it (its slot moved): nothing published on it reaches
                    # this node any more. Subscribe again against the new topology.
                    raise BackendUnavailable(f"redis ended the subscription to {channel!r}"
                                             f" (its slot moved to another shard)")

    def _leave(self, channel: str) -> None:
        """Note an unsubscribe this node is about to request (its confirmation is ours)."""
        key = channel.encode()
        self._leaving[key] = self._leaving.get(key, 0) + 1

    def _left(self, channel: bytes) -> bool:
        """True when the unsubscribe confirmed for `channel` is one this node requested."""
        pending = self._leaving.get(channel, 0)
        if pending <= 0:
            return False
        if pending == 1:
            del self._leaving[channel]
        else:
            self._leaving[channel] = pending - 1
        return True

    def _wanted(self) -> set[bytes]:
        return {channel.encode() for channel in self._channels()}

    async def _catch_up(self, pubsub: Any, seen: set[bytes]) -> int:
        """Groups followed or left while the subscription was being confirmed (follow_group
        and unfollow_group leave those to it): subscribe to the channels of the first,
        unsubscribe from those of the second; return how many more confirmations to await.
        """
        keys = self._core.keys
        wanted = {keys.group_channel(group) for group in self._groups}
        have = {channel.decode("utf-8", "surrogateescape") for channel in seen}
        missing = sorted(wanted - have)
        stale = sorted(c for c in have - wanted if keys.is_group_channel(c))
        if not missing and not stale:
            return 0
        try:
            async with self._commands, asyncio.timeout(self._core.op_timeout):
                if missing:
                    await pubsub.subscribe(*missing)
                for channel in stale:
                    self._leave(channel)
                    await pubsub.unsubscribe(channel)
        except _PUBSUB_FAILURES as exc:
            self._core.available = False
            raise BackendUnavailable(f"subscribe to groups failed: {exc!r}") from exc
        return len(missing)

    def _on_subscribed(self, channels: int) -> None:
        self._core.available = True
        self._lost_subscription = False
        self._subscribed.set()
        logger.info("node %s subscribed to %d channels", self._core.node_id, channels)

    async def _refresh_topology(self) -> None:
        """After losing a shard (a failover), re-read which node serves which slot: the
        cached slot map would point the new subscription at the dead master."""
        try:
            async with asyncio.timeout(self._core.op_timeout):
                await self._core.client.nodes_manager.initialize()  # type: ignore[union-attr]  # cluster only
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"cluster topology unavailable: {exc!r}") from exc

    async def publish(self, envelope: bytes) -> int:
        """PUBLISH once to every node; return how many *other* nodes received it."""
        receivers = await self._core.publish(self._core.keys.broadcast_channel, envelope)
        return max(receivers - (1 if self._subscribed.is_set() else 0), 0)

    async def route(self, client_id: str, envelope: bytes) -> bool:
        """One script: look up the owner and publish to its channel.

        Calls made while a round trip is in flight share the next pipelined one (on a
        Cluster, one per master), so many senders cost far fewer socket reads and writes.
        """
        core = self._core
        bucket = core.keys.bucket_of(client_id)
        keys = [core.keys.presence(bucket)]
        args: list[Any] = [client_id, core.keys.node_channel_prefix(bucket), envelope,
                           core.publish_command]
        return int(await self._routes.submit(keys, args)) > 0

    async def to_node(self, node_id: str, envelope: bytes) -> bool:
        """PUBLISH on the node's own channel (of bucket 0: it follows every bucket's)."""
        channel = self._core.keys.node_channel(0, node_id)
        return await self._core.publish(channel, envelope, "to_node") > 0

    async def follow_group(self, group: str) -> None:
        """Add the group's channel to the subscription; return once Redis confirmed it, so
        that a history read that follows cannot miss a message in between."""
        self._groups.add(group)
        pubsub = self._pubsub
        if pubsub is None or not self._subscribed.is_set():
            return  # the next subscription includes it
        channel = self._core.keys.group_channel(group)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations[channel.encode()] = confirmed
        try:
            async with asyncio.timeout(self._core.op_timeout):
                async with self._commands:
                    if self._pubsub is not pubsub:
                        return  # lost meanwhile: the next subscription includes it
                    await pubsub.subscribe(channel)
                await confirmed  # (or the subscription was lost: the next one includes it)
        except _PUBSUB_FAILURES as exc:
            if self._pubsub is not pubsub:
                return  # the subscription was lost meanwhile: the next one includes it
            raise BackendUnavailable(f"subscribe to group failed: {exc!r}") from exc
        finally:
            if self._confirmations.get(channel.encode()) is confirmed:
                del self._confirmations[channel.encode()]

    async def unfollow_group(self, group: str) -> None:
        """Remove the group's channel from the subscription."""
        self._groups.discard(group)
        pubsub = self._pubsub
        if pubsub is None or not self._subscribed.is_set():
            return
        try:
            async with asyncio.timeout(self._core.op_timeout), self._commands:
                if self._pubsub is not pubsub:
                    return  # lost meanwhile: the next subscription leaves it out
                channel = self._core.keys.group_channel(group)
                self._leave(channel)
                await pubsub.unsubscribe(channel)
        except _PUBSUB_FAILURES as exc:
            if self._pubsub is not pubsub:
                return  # the subscription was lost meanwhile: the next one leaves it out
            raise BackendUnavailable(f"unsubscribe from group failed: {exc!r}") from exc
