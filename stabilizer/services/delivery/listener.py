"""The listener: the one loop that reads what the backend hands this node and dispatches it.

It survives bad input (logged, counted, dropped) and a lost backend (resubscribes with
capped, jittered backoff); only cancellation ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from stabilizer.errors import BackendUnavailable, WireError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.text import backoff_delay
from stabilizer.pure.wire import FRESH, Envelope, Kind, close_of, decode
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.router import Router
from stabilizer.services.events import Events

logger = logging.getLogger(__name__)

#: Closes the local connection of a client if its conn id matches (a replacement elsewhere);
#: True when the replacing connection began a fresh session.
KickHandler = Callable[[str, str | None, bool], None]

#: Closes the local connections of a user with (code, reason) (disconnect_user elsewhere).
UserCloseHandler = Callable[[str, int, str], object]

#: Closes the local connection of a client with (code, reason) (an emitter's
#: disconnect_client), only the one with the conn id, when given (a resync's user limit).
ClientCloseHandler = Callable[[str, int, str, str | None], object]
#: Settles the acknowledgement this node waits for under `ref` with (ref, outcome (None:
#: acknowledged), the client that answered (None: a node of an older version did not say)).
AckHandler = Callable[[str | None, str | None, str | None], None]
#: Takes a PRESENCE envelope (a change of a group's presence, this node's own included).
PresenceHandler = Callable[[Envelope], None]

_MESSAGES = frozenset({Kind.BROADCAST, Kind.GROUP, Kind.DIRECT, Kind.USER})


class Listener:
    """Dispatches envelopes: messages to the router, kicks to admission, memberships to the
    group table, events to the listeners, user closes to the users service."""

    def __init__(self, ctx: NodeContext, router: Router, membership: Membership,
                 events: Events, on_kick: KickHandler, on_user_close: UserCloseHandler,
                 on_client_close: ClientCloseHandler | None = None,
                 on_ack: AckHandler | None = None,
                 on_presence: PresenceHandler | None = None,
                 on_resubscribing: Callable[[], None] | None = None,
                 keeps_membership: Callable[[Envelope], bool] | None = None) -> None:
        self._ctx = ctx
        # True when the node keeps a MEMBERSHIP envelope (for a connection being admitted)
        self._keeps_membership = keeps_membership
        self._on_presence = on_presence
        self._on_resubscribing = on_resubscribing
        self._on_ack = on_ack
        self._router = router
        self._membership = membership
        self._events = events
        self._on_kick = on_kick
        self._on_user_close = on_user_close
        self._on_client_close = on_client_close
        self._wire_log = RateLimitedLog(logger)
        self._backend_log = RateLimitedLog(logger)

    async def run(self) -> None:
        """Deliver what the backend hands this node until cancelled."""
        ctx = self._ctx
        failures = 0
        while True:
            try:
                if failures:
                    self._router.resubscribing()
                    if self._on_resubscribing is not None:
                        self._on_resubscribing()
                async for raw in ctx.backend.routing.deliveries():
                    failures = 0
                    await self._dispatch_one(raw)
            except BackendUnavailable as exc:
                failures += 1
                ctx.stats.backend_reconnects += 1
                ctx.want_resync()
                self._membership.subscription_lost()
                delay = backoff_delay(failures)
                self._backend_log.warning("subscription lost; resubscribing in %.2fs", delay,
                                          exc=exc)
                await asyncio.sleep(delay)
            except Exception:
                failures += 1
                # whatever came meanwhile is lost to this node, as after a lost subscription
                ctx.want_resync()
                self._membership.subscription_lost()
                logger.exception("listener failed unexpectedly; restarting it")
                await asyncio.sleep(backoff_delay(failures))

    async def _dispatch_one(self, raw: bytes) -> None:
        """Dispatch one envelope; one whose handling fails (neither the backend nor a
        cancellation) is dropped and logged, and the subscription carries on: one bad
        message never costs the node the messages that follow it."""
        try:
            await self.dispatch(raw)
        except BackendUnavailable:
            raise
        except Exception as exc:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped a message from the backend that could not be "
                                   "handled: %r", exc, exc=exc)

    async def dispatch(self, raw: bytes) -> None:
        """Act on one envelope from the backend."""
        try:
            envelope = decode(raw)
        except WireError as exc:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped an undecodable message from the backend: %s", exc)
            return
        kind = envelope.kind
        if kind in _MESSAGES:
            await self._router.receive(envelope)
        elif kind is Kind.PRESENCE:
            if self._on_presence is not None:
                self._on_presence(envelope)
        elif kind is Kind.MEMBERSHIP:
            # one this node sent itself too: a join (or hand-over) made here for a client
            # that was not in the pool then (still being admitted) took a remote one's path;
            # kept while the client's admission runs, then acted on like any other
            if self._keeps_membership is None or not self._keeps_membership(envelope):
                self._membership.apply(envelope)
        elif envelope.origin == self._ctx.node_id:
            return
        elif kind is Kind.KICK and envelope.target:
            self._on_kick(envelope.target, envelope.ref, envelope.payload == FRESH)
        elif kind is Kind.EVENT and isinstance(envelope.payload, str):
            self._events.received(envelope.payload)
        elif kind is Kind.USER_CLOSE and envelope.target and isinstance(envelope.payload, str):
            self._close(self._on_user_close, envelope.target, envelope.payload)
        elif (kind is Kind.CLIENT_CLOSE and envelope.target and self._on_client_close
              and isinstance(envelope.payload, str)):
            on_close, conn_id = self._on_client_close, envelope.ref
            self._close(lambda client_id, code, reason: on_close(client_id, code, reason,
                                                                 conn_id),
                        envelope.target, envelope.payload)
        elif kind is Kind.ACK and self._on_ack is not None and (
                envelope.payload is None or isinstance(envelope.payload, str)):
            self._on_ack(envelope.ref, envelope.payload, envelope.target)

    def _close(self, handler: Callable[[str, int, str], object], target: str,
               payload: str) -> None:
        try:
            code, reason = close_of(payload)
        except WireError as exc:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped a close request: %s", exc)
            return
        handler(target, code, reason)
