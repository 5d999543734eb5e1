"""LiveRouter: delivery without history. The origin node delivers to its own clients at once
and hands the message to the other nodes in one publish; nodes drop their own publications."""

from __future__ import annotations

import logging

from stabilizer.connection.sockets import Frame
from stabilizer.errors import BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.acks import ack_token
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.results import BroadcastResult
from stabilizer.services.delivery.fanout import FanOut

logger = logging.getLogger(__name__)


class LiveRouter:
    """At-most-once delivery across nodes, immediate delivery on this one."""

    def __init__(self, ctx: NodeContext, fanout: FanOut) -> None:
        self._ctx = ctx
        self._fanout = fanout
        self._backend_log = RateLimitedLog(logger)

    async def publish(self, target: Target, payload: str | bytes, exclude: str | None,
                      value: object = None) -> BroadcastResult:
        """Hand the message to the other nodes and deliver it to local recipients; the
        publish is on the wire before the local fan-out starts, and is cancelled with the
        caller."""
        ctx = self._ctx
        sending = None
        if ctx.backend.is_shared:
            kind = Kind.BROADCAST if target.kind == "all" else Kind.GROUP
            raw = encode(Envelope(kind, ctx.node_id, target.name or None, payload, exclude))
            backend = ctx.backend
            sending = (backend.routing.publish(raw) if target.kind == "all"
                       else backend.groups.publish(target.name, raw))
        return await self._fanout.deliver_publishing(target, Frame.of(payload, value), exclude,
                                                     sending, self._backend_log)

    async def send(self, client_id: str, payload: str | bytes, value: object = None,
                   ack: str | None = None) -> bool:
        """A local hit costs no round trip; otherwise one script routes it to the owner."""
        ctx = self._ctx
        conn = ctx.pool.get(client_id)
        if conn is not None:
            frame = Frame.of(payload, value)
            if ack is not None:
                frame.asking_ack(ack_token(ctx.node_id, ack))
            return self._fanout.offer(conn, frame)
        if not ctx.backend.is_shared:
            return False
        envelope = encode(Envelope(Kind.DIRECT, ctx.node_id, client_id, payload, ref=ack))
        try:
            return await ctx.ask(ctx.backend.routing.route(client_id, envelope))
        except BackendUnavailable as exc:
            self._backend_log.warning("send to %r not routed: backend unavailable", client_id,
                                      exc=exc)
            return False

    async def send_to_user(self, user_id: str, payload: str | bytes,
                           value: object = None, ack: str | None = None) -> list[str]:
        """One script hands it to the other nodes holding the user's connections; then the
        local connections get it, but for one whose client id the user's seats place on
        another node: that socket was replaced there and is closed once this node hears of
        it, and its successor gets the message (each client id once)."""
        ctx = self._ctx
        frame = Frame.of(payload, value)
        if ack is not None:  # (one token for all: each connection acknowledges it once)
            frame.asking_ack(ack_token(ctx.node_id, ack))
        if not ctx.backend.is_shared:
            return self._offer_to_user(user_id, frame)
        envelope = encode(Envelope(Kind.USER, ctx.node_id, user_id, payload, ref=ack))
        try:
            route = await ctx.ask(ctx.backend.users.route(user_id, envelope))
        except BackendUnavailable as exc:
            self._backend_log.warning("send to user %r reached this node only: backend "
                                      "unavailable", user_id, exc=exc)
            return self._offer_to_user(user_id, frame)
        return self._offer_to_user(user_id, frame, route.elsewhere) + route.reached

    def _offer_to_user(self, user_id: str, frame: Frame,
                       replaced: frozenset[str] = frozenset()) -> list[str]:
        """Offer `frame` to the local connections of `user_id` but those of `replaced`;
        return the client ids of those that took it."""
        return [conn.client_id for conn in self._ctx.pool.of_user(user_id)
                if conn.client_id not in replaced and self._fanout.offer(conn, frame)]

    async def receive(self, envelope: Envelope) -> None:
        """Deliver another node's message to the local recipients."""
        destination = envelope.destination
        if envelope.origin == self._ctx.node_id or destination is None or (
            envelope.payload is None
        ):
            return
        frame = Frame.of(envelope.payload)
        if destination.kind == "client":
            conn = self._ctx.pool.get(destination.name)
            if conn is not None:
                if envelope.ref is not None:
                    frame.asking_ack(ack_token(envelope.origin, envelope.ref))
                self._fanout.offer(conn, frame)
            return
        if destination.kind == "user" and envelope.ref is not None:
            frame.asking_ack(ack_token(envelope.origin, envelope.ref))
        await self._fanout.deliver(destination, frame, envelope.exclude)

    def resubscribing(self) -> None:
        """Nothing to catch up: live delivery is at-most-once."""

    def follow(self, stream: str, offset: int, epoch: str) -> None:
        """Nothing is tracked per stream."""

    def delivered_after(self, stream: str, offset: int, epoch: str) -> bool:
        """Nothing is tracked per stream (and nothing is owed: at-most-once)."""
        return False

    def unfollow(self, stream: str) -> None:
        """Nothing is tracked per stream."""
