"""Wiring: one node's services, built once and connected to each other.

The facade (``WebSocketConnectionManager``) holds the result and delegates to it; nothing
here has behaviour of its own beyond choosing the router and the loops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stabilizer.auth.identity import Authenticator
from stabilizer.backends.base import Backend
from stabilizer.config import WebSocketConfig
from stabilizer.node.context import NodeContext
from stabilizer.pure.wire import Envelope
from stabilizer.services.acks import Acks
from stabilizer.services.admission import Admission
from stabilizer.services.auth import Auth
from stabilizer.services.channels import Channels
from stabilizer.services.closing import Closing
from stabilizer.services.delivery.fanout import FanOut
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.listener import Listener
from stabilizer.services.delivery.live import LiveRouter
from stabilizer.services.delivery.router import Router
from stabilizer.services.delivery.sequenced import SequencedRouter
from stabilizer.services.events import Events
from stabilizer.services.lifecycle import Lifecycle, Loop
from stabilizer.services.liveness import Liveness
from stabilizer.services.maintenance import Maintenance
from stabilizer.services.memory import MemoryGuard
from stabilizer.services.presence import PresenceWatch
from stabilizer.services.reports import Reporter
from stabilizer.services.resume import Resume
from stabilizer.services.rpc import Procedures
from stabilizer.services.settlement import Settlement
from stabilizer.services.tokens import TokenService
from stabilizer.services.users import Users
from stabilizer.session import SessionServices
from stabilizer.stats import NodeStats


@dataclass(frozen=True, slots=True)
class Node:
    """The services of one node."""

    ctx: NodeContext
    events: Events
    liveness: Liveness
    membership: Membership
    router: Router
    closing: Closing
    memory: MemoryGuard
    tokens: TokenService
    admission: Admission
    users: Users
    lifecycle: Lifecycle
    sessions: SessionServices
    reporter: Reporter


def assemble(config: WebSocketConfig, backend: Backend, *,
             authenticator: Authenticator | None,
             ensure_started: Callable[[], Awaitable[None]],
             node_id: str | None = None, stats: NodeStats | None = None) -> Node:
    """Build and connect every service of a node over `backend`."""
    ctx = NodeContext(config, backend, node_id=node_id, stats=stats)
    events = Events(ctx)
    closing_ref: list[Closing] = []
    router_ref: list[Router] = []
    liveness = Liveness(
        ctx, on_timeout=lambda conn: closing_ref[0].on_timeout(conn),
        retire=lambda conn, code, reason: closing_ref[0].retire(conn, code, reason))
    watch = PresenceWatch(ctx)
    membership = Membership(ctx, events,
                            on_unfollow=lambda stream: _unfollow(router_ref[0], watch, stream),
                            on_forget=watch.forget, on_leave=watch.left)
    fanout = FanOut(ctx, membership)
    sequenced = SequencedRouter(ctx, fanout, membership) if config.history_enabled else None
    router: Router = sequenced or LiveRouter(ctx, fanout)
    router_ref.append(router)
    closing = Closing(ctx, liveness, membership, Settlement(ctx, membership, events, fanout))
    closing_ref.append(closing)
    memory = MemoryGuard(ctx, closing)
    tokens = TokenService(ctx)
    resume = (Resume(ctx, membership, sequenced, fanout, retire=closing.retire)
              if sequenced is not None else None)
    admission = Admission(ctx, closing, liveness, memory, events, router,
                          ensure_started=ensure_started, apply_membership=membership.apply,
                          catch_up=resume.catch_up if resume is not None else None)
    users = Users(ctx, router, closing, admission.retire_pending)
    acks = Acks(ctx, router)
    fanout.on_unackable = acks.unackable
    reporter = Reporter(ctx, membership.local_groups)
    maintenance = Maintenance(ctx, memory, tokens, connections=admission.connections,
                              kick=admission.kick, close_client=users.close_client_local,
                              settle_groups=lambda conns, restore: membership.settle(
                                  conns, restore=restore, node_wide=True),
                              settle_doubted=membership.settle_doubted,
                              reporter=reporter)
    listener = Listener(ctx, router, membership, events, on_kick=admission.kick,
                        on_user_close=users.close_local, on_client_close=users.close_client_local,
                        on_ack=acks.settle,
                        on_presence=lambda envelope: _presence(membership, watch, envelope),
                        on_resubscribing=lambda: _resubscribing(watch, maintenance),
                        keeps_membership=admission.defer_membership)
    # the listener runs on one node alone too: the backend hands it its own presence
    # changes, in the backend's order (on one node, nothing else arrives)
    loops: dict[str, Loop] = {"heartbeat": liveness.run, "maintenance": maintenance.run,
                              "listener": listener.run}
    lifecycle = Lifecycle(ctx, closing, tokens, loops, acks)
    sessions = SessionServices(
        ctx, admission, closing, liveness, tokens,
        resume,
        Auth(ctx, authenticator, closing), Procedures(ctx),
        Channels(ctx, membership, router, watch), acks)
    return Node(ctx, events, liveness, membership, router, closing, memory, tokens,
                admission, users, lifecycle, sessions, reporter)


def reassemble(earlier: Node, backend: Backend, *, authenticator: Authenticator | None,
               ensure_started: Callable[[], Awaitable[None]]) -> Node:
    """A node to start in a new event loop in place of `earlier`, whose loop ended: new
    services over `backend` (every lock, event, task and connection of the old ones belongs
    to that loop), with its node id (the start forgets what it left, as after a restart),
    its counters, and the hooks and procedures the application registered on it."""
    node = assemble(earlier.ctx.config, backend, authenticator=authenticator,
                    ensure_started=ensure_started, node_id=earlier.ctx.node_id,
                    stats=earlier.ctx.stats)
    node.events.adopt(earlier.events)
    node.sessions.procedures.adopt(earlier.sessions.procedures)
    node.sessions.channels.adopt(earlier.sessions.channels)
    return node


def _resubscribing(watch: PresenceWatch, maintenance: Maintenance) -> None:
    watch.resubscribing()
    maintenance.resubscribing()  # (its settle follows as soon as the subscription is back)


def _presence(membership: Membership, watch: PresenceWatch, envelope: Envelope) -> None:
    changes = watch.receive(envelope)  # parsed once for both
    if changes and envelope.target is not None:
        membership.entries.heard(envelope.target, changes)  # what the node gives back if lost


def _unfollow(router: Router, watch: PresenceWatch, stream: str) -> None:
    router.unfollow(stream)
    watch.unfollow(stream)
