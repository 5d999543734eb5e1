"""Delivery: broadcast, direct, group messages; the node's listener; groups; resume replay.

Two modes:

- Without history, a message is delivered to local clients at once and handed to the other
  nodes in one publish; nodes drop their own publications.
- With history (``history_size > 0``) every message is sequenced by the backend (offset +
  epoch, appended to a bounded stream) and reaches *every* node, this one included, through
  its subscription, so all nodes deliver each stream in the same order. A node that sees a
  gap in a stream's offsets fills it from history before going on, and tells its clients
  to resync when it cannot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stabilizer._util import RateLimitedLog, backoff_delay, check_client_id
from stabilizer.backends.base import Target
from stabilizer.config import CloseCode
from stabilizer.errors import (
    BackendUnavailable,
    ConnectionNotFoundError,
    WireError,
)
from stabilizer.pool import Connection, Frame
from stabilizer.results import BroadcastResult, ClusterEvent
from stabilizer.streams import Step, StreamOrder, message_frame, resume_frame
from stabilizer.wire import Envelope, Kind, decode, encode

if TYPE_CHECKING:
    from stabilizer.manager import WebSocketConnectionManager

logger = logging.getLogger(__name__)

MAX_GROUP_LENGTH = 256


def frame_of(payload: str | bytes) -> Frame:
    """The client frame of an unsequenced application payload."""
    return Frame.text(payload) if isinstance(payload, str) else Frame.binary(payload)


def check_group(group: object) -> str:
    """Return `group` if usable as a group name (same rules as client ids).

    Raises:
        ValueError: not a non-empty string of at most 256 characters.
    """
    try:
        return check_client_id(group, MAX_GROUP_LENGTH)
    except ConnectionNotFoundError as exc:
        raise ValueError(str(exc).replace("client_id", "group")) from exc


def _sequenced_or_none(raw: bytes) -> Envelope | None:
    """Decode a stored history entry; None (logged) if the store holds something foreign."""
    try:
        return decode(raw)
    except WireError:
        logger.warning("undecodable history entry skipped")
        return None


class Delivery:
    """Everything that moves messages for one manager (its node)."""

    def __init__(self, manager: WebSocketConnectionManager) -> None:
        self._m = manager
        self._config = manager.config
        self.history = manager.config.history_enabled
        self.groups: dict[str, set[Connection]] = {}
        self.order = StreamOrder()
        self._sequenced_lock = asyncio.Lock()
        self.event_listeners: list[Callable[[ClusterEvent], Any]] = []
        self._wire_log = RateLimitedLog(logger)
        self._backend_log = RateLimitedLog(logger)

    # ------------------------------------------------------------------ helpers

    @property
    def _node(self) -> str:
        return self._m.node_id

    async def _bounded(self, awaitable: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self._config.op_timeout):
            return await awaitable

    def _sequence_options(self) -> dict[str, Any]:
        config = self._config
        return {"size": config.history_size, "ttl": config.history_ttl,
                "meta_ttl": max(config.history_ttl, config.session_ttl) + 60.0}

    # ------------------------------------------------------------------ broadcast

    async def broadcast(self, payload: str | bytes, exclude: str | None) -> BroadcastResult:
        """Deliver to every client on every node (see the module docstring for the modes)."""
        envelope = Envelope(Kind.BROADCAST, self._node, None, payload, exclude)
        if self.history:
            return await self._sequenced(Target("all"), envelope, lambda: self._fan_out(
                self._history_frame("all", None, None, payload), exclude))
        backend = self._m.backend
        publish: asyncio.Task[int] | None = None
        if backend.is_shared:
            publish = asyncio.get_running_loop().create_task(
                self._bounded(backend.publish(encode(envelope))))
            await asyncio.sleep(0)  # let the publish reach the wire before the local fan-out
        result = await self._fan_out(frame_of(payload), exclude)
        if publish is not None:
            await self._collect_remote(publish, result)
        return result

    async def _collect_remote(self, publish: asyncio.Task[int], result: BroadcastResult) -> None:
        try:
            result.remote_nodes = await publish
        except (BackendUnavailable, TimeoutError) as exc:
            result.remote_error = f"other nodes not reached: {exc or type(exc).__name__}"
            self._backend_log.warning("delivered locally only: %s", result.remote_error)

    async def _sequenced(
        self, target: Target, envelope: Envelope,
        local_fallback: Callable[[], Awaitable[BroadcastResult]],
    ) -> BroadcastResult:
        """Sequence through the backend; if it is down, deliver locally without positions."""
        try:
            done = await self._bounded(
                self._m.backend.sequence(target, envelope, **self._sequence_options()))
        except (BackendUnavailable, TimeoutError) as exc:
            result = await local_fallback()
            result.remote_error = f"not sequenced, delivered locally only: {exc!r}"
            self._backend_log.warning("history unavailable: %s", result.remote_error)
            return result
        result = BroadcastResult(0, 0, 0)
        result.offset, result.epoch = done.offset, done.epoch
        result.remote_nodes = max(done.receivers - 1, 0) if target.kind != "client" else (
            done.receivers)
        return result

    def _history_frame(self, stream: str, offset: int | None, epoch: str | None,
                       payload: str | bytes) -> Frame:
        return Frame.text(message_frame(stream, offset, epoch, payload))

    async def _fan_out(
        self, frame: Frame, exclude: str | None, *, members: set[Connection] | None = None,
        stream: str | None = None, offset: int | None = None,
    ) -> BroadcastResult:
        """Give one frame to every local connection (or to `members`), yielding between
        slices of max_concurrent_broadcast recipients."""
        started = time.perf_counter()
        result = BroadcastResult(0, 0, 0)
        slice_size = self._config.max_concurrent_broadcast
        budget = slice_size
        shards = [list(members)] if members is not None else self._m.pool.shards()
        for shard in shards:
            now = time.monotonic()
            for conn in shard:
                if conn.client_id == exclude:
                    continue
                result.total += 1
                if conn.deliver(frame, now, stream, offset):
                    result.succeeded += 1
                else:
                    result.failed += 1
                    result.errors.append((conn.client_id, "outbox full or connection closing"))
                budget -= 1
            if budget <= 0:
                budget = slice_size
                await asyncio.sleep(0)
        stats = self._m.stats
        stats.messages_out += result.succeeded
        stats.bytes_out += result.succeeded * frame.size
        if result.total:
            stats.fanout_seconds.observe(time.perf_counter() - started)
        return result

    # ------------------------------------------------------------------ direct

    async def send(self, client_id: str, payload: str | bytes) -> bool:
        """Deliver to one client wherever it is (kept for it while away, with history)."""
        if self.history:
            envelope = Envelope(Kind.DIRECT, self._node, client_id, payload)
            conn = self._m.get_connection(client_id)

            async def local() -> BroadcastResult:
                ok = conn is not None and conn.deliver(
                    self._history_frame(f"c:{client_id}", None, None, payload),
                    time.monotonic())
                return BroadcastResult(1, int(ok), int(not ok))

            result = await self._sequenced(Target("client", client_id), envelope, local)
            return bool(result.offset) or result.succeeded > 0
        conn = self._m.get_connection(client_id)
        if conn is not None:
            return self._m.offer(conn, frame_of(payload))
        backend = self._m.backend
        if not backend.is_shared:
            return False
        envelope = Envelope(Kind.DIRECT, self._node, client_id, payload)
        try:
            return bool(await self._bounded(backend.route(client_id, encode(envelope))))
        except (BackendUnavailable, TimeoutError) as exc:
            self._backend_log.warning("send to %r not routed: backend unavailable", client_id,
                                      exc=exc)
            return False

    # ------------------------------------------------------------------ groups

    async def send_to_group(
        self, group: str, payload: str | bytes, exclude: str | None
    ) -> BroadcastResult:
        """Deliver to every member of `group` on every node."""
        envelope = Envelope(Kind.GROUP, self._node, group, payload, exclude)
        members = self.groups.get(group, set())
        if self.history:
            return await self._sequenced(Target("group", group), envelope, lambda: self._fan_out(
                self._history_frame(f"g:{group}", None, None, payload), exclude,
                members=members))
        backend = self._m.backend
        publish: asyncio.Task[int] | None = None
        if backend.is_shared:
            publish = asyncio.get_running_loop().create_task(
                self._bounded(backend.publish_group(group, encode(envelope))))
            await asyncio.sleep(0)
        result = await self._fan_out(frame_of(payload), exclude, members=members)
        if publish is not None:
            await self._collect_remote(publish, result)
        return result

    async def join(self, client_id: str, group: str) -> None:
        """Add a client (on any node) to a group; its node subscribes if it is the first."""
        conn = self._m.get_connection(client_id)
        backend = self._m.backend
        if conn is None:
            owner = await self._m.locate_client(client_id) if backend.is_shared else None
            if owner is None:
                raise ConnectionNotFoundError(f"client {client_id!r} is not connected")
            await self._bounded(backend.join_group(client_id, group))
            envelope = Envelope(Kind.MEMBERSHIP, self._node, client_id, group, ref="join")
            await self._bounded(backend.route(client_id, encode(envelope)))
            return
        await self.join_local(conn, group)
        if await self._bounded(backend.join_group(client_id, group)):
            self._local_event("join", client_id, group)

    async def join_local(self, conn: Connection, group: str) -> None:
        """Record local membership; subscribe this node to the group on its first member."""
        if conn.groups is None:
            conn.groups = set()
        conn.groups.add(group)
        members = self.groups.get(group)
        if members is None:
            members = self.groups[group] = set()
            try:
                await self._bounded(self._m.backend.subscribe_group(group))
            except (BackendUnavailable, TimeoutError) as exc:
                self._backend_log.warning("group %r not subscribed yet (backend down); the "
                                          "listener resubscribes when it reconnects", group,
                                          exc=exc)
        members.add(conn)

    async def leave(self, client_id: str, group: str) -> None:
        """Remove a client (on any node) from a group."""
        conn = self._m.get_connection(client_id)
        backend = self._m.backend
        left = await self._bounded(backend.leave_group(client_id, group))
        if conn is not None:
            await self.leave_local(conn, group)
            if left:
                self._local_event("leave", client_id, group)
        elif backend.is_shared:
            envelope = Envelope(Kind.MEMBERSHIP, self._node, client_id, group, ref="leave")
            await self._bounded(backend.route(client_id, encode(envelope)))

    async def leave_local(self, conn: Connection, group: str) -> None:
        """Drop local membership; unsubscribe this node when the last local member left."""
        if conn.groups is not None:
            conn.groups.discard(group)
        members = self.groups.get(group)
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self.groups[group]
            self.order.forget(f"g:{group}")
            try:
                await self._bounded(self._m.backend.unsubscribe_group(group))
            except (BackendUnavailable, TimeoutError) as exc:
                self._backend_log.warning("group %r not unsubscribed (backend down)", group,
                                          exc=exc)

    async def forget_connection(self, conn: Connection) -> None:
        """Drop a closed connection's local memberships (cluster membership is the
        manager's decision: kept while the session is resumable)."""
        for group in list(conn.groups or ()):
            await self.leave_local(conn, group)
        self.order.forget(f"c:{conn.client_id}")

    # ------------------------------------------------------------------ events

    def _local_event(self, event: str, client_id: str, group: str | None = None) -> None:
        if self._config.cluster_events:
            self.emit(ClusterEvent(event, client_id, group, self._node))

    def emit(self, event: ClusterEvent) -> None:
        """Call every cluster-event listener (async ones run as tasks)."""
        for listener in self.event_listeners:
            try:
                outcome = listener(event)
                if asyncio.iscoroutine(outcome):
                    self._m.spawn(outcome, name="stabilizer-event")
            except Exception:
                logger.exception("cluster event listener failed")

    async def publish_event(self, event: str, client_id: str) -> None:
        """Tell every node about a connect or disconnect (cluster_events only)."""
        if not self._config.cluster_events:
            return
        self._local_event(event, client_id)
        body = json.dumps({"event": event, "client_id": client_id, "node_id": self._node})
        if self._m.backend.is_shared:
            envelope = Envelope(Kind.EVENT, self._node, None, body)
            try:
                await self._bounded(self._m.backend.publish(encode(envelope)))
            except (BackendUnavailable, TimeoutError) as exc:
                self._backend_log.warning("cluster event not published", exc=exc)

    # ------------------------------------------------------------------ listener

    async def listen(self) -> None:
        """Deliver what the backend hands this node; survives bad input and backend loss."""
        failures = 0
        backend = self._m.backend
        while True:
            try:
                if failures and self.history:
                    self._m.spawn(self._catch_up_once_subscribed(), name="stabilizer-catch-up")
                async for raw in backend.deliveries():
                    failures = 0
                    await self.dispatch(raw)
            except BackendUnavailable as exc:
                failures += 1
                self._m.stats.backend_reconnects += 1
                self._m.request_resync()
                delay = backoff_delay(failures)
                self._backend_log.warning("subscription lost; resubscribing in %.2fs", delay,
                                          exc=exc)
                await asyncio.sleep(delay)
            except Exception:
                failures += 1
                logger.exception("listener failed unexpectedly; restarting it")
                await asyncio.sleep(backoff_delay(failures))

    async def _catch_up_once_subscribed(self) -> None:
        await self._m.backend.subscribed.wait()
        try:
            await self.catch_up()
        except Exception:
            logger.exception("catching up after a resubscription failed")

    async def dispatch(self, raw: bytes) -> None:
        """Act on one envelope from the backend."""
        try:
            envelope = decode(raw)
        except WireError as exc:
            self._m.stats.wire_errors += 1
            self._wire_log.warning("dropped an undecodable message from the backend: %s", exc)
            return
        if envelope.offset is not None:
            await self._dispatch_sequenced(envelope)
            return
        if envelope.origin == self._node:
            return
        kind = envelope.kind
        if kind is Kind.BROADCAST and envelope.payload is not None:
            await self._fan_out(frame_of(envelope.payload), envelope.exclude)
        elif kind is Kind.GROUP and envelope.payload is not None and envelope.target:
            members = self.groups.get(envelope.target)
            if members:
                await self._fan_out(frame_of(envelope.payload), envelope.exclude,
                                    members=members)
        elif kind is Kind.DIRECT and envelope.payload is not None and envelope.target:
            conn = self._m.get_connection(envelope.target)
            if conn is not None:
                self._m.offer(conn, frame_of(envelope.payload))
        elif kind is Kind.KICK and envelope.target:
            conn = self._m.get_connection(envelope.target)
            if conn is not None and (envelope.ref is None or conn.conn_id == envelope.ref):
                self._m.retire(conn, CloseCode.REPLACED,
                               "replaced by a newer connection on another node")
        elif kind is Kind.MEMBERSHIP and envelope.target and isinstance(envelope.payload, str):
            await self._remote_membership(envelope)
        elif kind is Kind.EVENT and isinstance(envelope.payload, str):
            self._remote_event(envelope.payload)

    async def _remote_membership(self, envelope: Envelope) -> None:
        assert envelope.target is not None
        assert isinstance(envelope.payload, str)
        conn = self._m.get_connection(envelope.target)
        if conn is None:
            return
        # Subscribing waits for Redis to confirm, and only this listener reads confirmations:
        # do it beside the listener, never inside it.
        if envelope.ref == "join":
            self._m.spawn(self.join_local(conn, envelope.payload), name="stabilizer-join")
        elif envelope.ref == "leave":
            self._m.spawn(self.leave_local(conn, envelope.payload), name="stabilizer-leave")

    def _remote_event(self, payload: str) -> None:
        try:
            body = json.loads(payload)
            event = ClusterEvent(str(body["event"]), str(body["client_id"]),
                                 body.get("group"), str(body["node_id"]))
        except (ValueError, KeyError, TypeError):
            self._m.stats.wire_errors += 1
            self._wire_log.warning("dropped a malformed cluster event")
            return
        if event.node_id != self._node:
            self.emit(event)

    # ------------------------------------------------------------------ sequenced

    async def _dispatch_sequenced(self, envelope: Envelope) -> None:
        stream = envelope.stream
        assert envelope.offset is not None
        assert envelope.epoch is not None
        if stream is None or envelope.payload is None:
            return
        # One ordered path: the listener and a catch-up after a resubscription take turns.
        async with self._sequenced_lock:
            step = self.order.classify(stream, envelope.offset, envelope.epoch)
            if step is Step.DUPLICATE:
                return
            if step is Step.GAP:
                self._m.stats.stream_gaps += 1
                await self._fill_from_history(stream, before=envelope.offset)
            await self._deliver_sequenced(stream, envelope)

    async def _fill_from_history(self, stream: str, *, before: int | None = None) -> None:
        """Deliver what `stream` holds after the last offset delivered here (up to `before`);
        tell the stream's local clients to resync when the history does not cover it."""
        last = self.order.last(stream)
        if last is None:
            return
        try:
            found = await self._bounded(self._m.backend.history(stream, last[0], last[1]))
        except (BackendUnavailable, TimeoutError):
            found = None
        if found is None or not found.covered:
            logger.warning("stream %s after offset %d could not be recovered", stream, last[0])
            self._tell_to_resync(stream)
            return
        filled = 0
        for raw in found.envelopes:
            missed = _sequenced_or_none(raw)
            if missed is None or missed.offset is None or missed.epoch is None or (
                before is not None and missed.offset >= before
            ):
                continue
            if self.order.classify(stream, missed.offset, missed.epoch) is Step.DELIVER:
                await self._deliver_sequenced(stream, missed)
                filled += 1
        if before is not None or filled:
            self._m.stats.gaps_filled += 1

    async def catch_up(self) -> None:
        """After a resubscription: deliver what every followed stream received meanwhile
        (a gap at the end of a stream shows no later message to reveal it)."""
        async with self._sequenced_lock:
            for stream in self.order.streams():
                await self._fill_from_history(stream)

    def _tell_to_resync(self, stream: str) -> None:
        frame = Frame.text(resume_frame(0, [stream]))
        now = time.monotonic()
        for conn in self._subscribers(stream):
            conn.deliver(frame, now)

    def _subscribers(self, stream: str) -> list[Connection]:
        if stream == "all":
            return list(self._m.pool.connections())
        if stream.startswith("g:"):
            return list(self.groups.get(stream[2:], ()))
        conn = self._m.get_connection(stream[2:])
        return [] if conn is None else [conn]

    async def _deliver_sequenced(self, stream: str, envelope: Envelope) -> None:
        assert envelope.offset is not None
        assert envelope.epoch is not None
        assert envelope.payload is not None
        self.order.advance(stream, envelope.offset, envelope.epoch)
        frame = self._history_frame(stream, envelope.offset, envelope.epoch, envelope.payload)
        if envelope.kind is Kind.BROADCAST:
            await self._fan_out(frame, envelope.exclude, stream=stream, offset=envelope.offset)
        elif envelope.kind is Kind.GROUP and envelope.target:
            members = self.groups.get(envelope.target)
            if members:
                await self._fan_out(frame, envelope.exclude, members=members, stream=stream,
                                    offset=envelope.offset)
        elif envelope.kind is Kind.DIRECT and envelope.target:
            conn = self._m.get_connection(envelope.target)
            if conn is not None and conn.deliver(frame, time.monotonic(), stream,
                                                 envelope.offset):
                self._m.stats.messages_out += 1

    # ------------------------------------------------------------------ resume

    async def replay(
        self, conn: Connection, positions: dict[str, tuple[int, str]], streams: set[str]
    ) -> tuple[int, list[str]]:
        """Send `conn` what it missed on `streams` since `positions` (an empty epoch: from
        the start of the stream), then release the frames held meanwhile without
        duplicates; return (replayed count, failed streams)."""
        replayed = 0
        failed: list[str] = []
        delivered: dict[str, int] = {}
        now = time.monotonic()
        backend = self._m.backend
        for stream in sorted(streams):
            if stream not in positions:
                continue  # no known starting point: nothing to catch up
            after, epoch = positions[stream]
            try:
                found = await self._bounded(backend.history(stream, after, epoch))
            except (BackendUnavailable, TimeoutError):
                failed.append(stream)
                continue
            if not found.covered:
                failed.append(stream)
                continue
            for raw in found.envelopes:
                missed = _sequenced_or_none(raw)
                if missed is None or missed.offset is None or missed.payload is None:
                    continue
                delivered[stream] = missed.offset
                if missed.exclude == conn.client_id:
                    continue
                frame = self._history_frame(stream, missed.offset, missed.epoch,
                                            missed.payload)
                if conn.offer(frame, now):
                    replayed += 1
        held, conn.hold = conn.hold or [], None
        conn.replayed = delivered or None
        for stream_name, offset, frame in held:
            conn.deliver(frame, now, stream_name, offset)
        conn.offer(Frame.text(resume_frame(replayed, failed)), now)
        return replayed, failed
