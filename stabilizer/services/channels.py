"""Channels a v2 client subscribes to and publishes on itself (docs/protocol.md 6.6),
through the application's hooks: a channel is a group, so a subscription is a membership
like any other (cluster-wide, kept across a resume) and a publish is a send to the group.

Without an ``on_subscribe`` (``on_publish``) hook, every subscribe (publish) is refused:
a client reaches only what the application lets it. A channel's namespace
(``channel_namespaces``) narrows it further: who may publish (the hook, members only, or
nobody), and whether presence may be asked for.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

from stabilizer.channels import PublishHook, PublishRequest, SubscribeHook, SubscribeRequest
from stabilizer.connection.connection import Connection
from stabilizer.errors import BackendUnavailable, ConfigError, ConnectionNotFoundError
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import reply_error_frame, reply_frame
from stabilizer.pure.presence import encode_meta
from stabilizer.pure.streams import Target
from stabilizer.pure.text import encode_message, json_value
from stabilizer.pure.v2 import ChannelRequest
from stabilizer.services.delivery.groups import Membership
from stabilizer.services.delivery.router import Router
from stabilizer.services.presence import PresenceWatch
from stabilizer.services.rpc import guarded

logger = logging.getLogger(__name__)

FORBIDDEN: Final = "forbidden"
BAD_REQUEST: Final = "bad_request"
UNAVAILABLE: Final = "unavailable"
LIMIT_EXCEEDED: Final = "limit_exceeded"


class Channels:
    """Subscribe, unsubscribe and publish for v2 clients, as the hooks allow."""

    def __init__(self, ctx: NodeContext, membership: Membership, router: Router,
                 watch: PresenceWatch) -> None:
        self._ctx = ctx
        self._watch = watch
        self._membership = membership
        self._router = router
        self._on_subscribe: SubscribeHook | None = None
        self._on_publish: PublishHook | None = None
        # by conn_id: the channels its subscribes in flight would add (they count towards
        # max_channels_per_connection before they join, or concurrent ones all pass)
        self._joining: dict[str, Counter[str]] = {}

    def on_subscribe(self, hook: SubscribeHook) -> SubscribeHook:
        """Set the hook that allows or refuses a client's subscribe.

        Raises:
            ConfigError: one is set already, or it is not callable.
        """
        if not callable(hook) or self._on_subscribe is not None:
            raise ConfigError("on_subscribe takes one callable hook, once")
        self._on_subscribe = hook
        return hook

    def on_publish(self, hook: PublishHook) -> PublishHook:
        """Set the hook that allows, rewrites or refuses a client's publish.

        Raises:
            ConfigError: one is set already, or it is not callable.
        """
        if not callable(hook) or self._on_publish is not None:
            raise ConfigError("on_publish takes one callable hook, once")
        self._on_publish = hook
        return hook

    def adopt(self, earlier: Channels) -> None:
        """Take the hooks set on `earlier` (the node this one replaces)."""
        self._on_subscribe, self._on_publish = earlier._on_subscribe, earlier._on_publish

    async def subscribe(self, conn: Connection, request: ChannelRequest) -> str | list[str]:
        """Ask the hook; join the channel (with the presence metadata it gave, if any) if
        it allows. Return the reply frame, followed by the channel's presence for a
        subscribe that follows it.

        A refusal changes no membership: a channel the connection is in already (the
        application's join_group, or a membership a resumed session kept) stays, whatever
        the hook says now. A client that wants out unsubscribes (the bundled clients do
        when a subscribe they send again into a session that kept the channel is
        refused)."""
        ident, channel = request.call_id, request.channel
        hook = self._on_subscribe
        if hook is None:
            return reply_error_frame(ident, FORBIDDEN, "this server takes no subscriptions")
        limit = self._over_limit(conn, channel)
        if limit is not None:
            return reply_error_frame(ident, LIMIT_EXCEEDED, f"a connection may be in at most "
                                     f"{limit} channels; unsubscribe from one first")
        joining = self._joining.setdefault(conn.conn_id, Counter())
        joining[channel] += 1
        try:
            return await self._subscribe(conn, request, hook)
        finally:
            joining[channel] -= 1
            if not joining[channel]:
                del joining[channel]
            if not joining:
                del self._joining[conn.conn_id]

    def _over_limit(self, conn: Connection, channel: str) -> int | None:
        """max_channels_per_connection when a subscribe of `channel` would take `conn` past
        it, counting the channels its subscribes in flight would add; else None."""
        limit = self._ctx.config.max_channels_per_connection
        joining = self._joining.get(conn.conn_id, Counter[str]())
        if limit is None or channel in conn.groups or channel in joining:
            return None
        adding = sum(1 for other in joining if other not in conn.groups)
        return limit if conn.group_count + adding >= limit else None

    async def _subscribe(self, conn: Connection, request: ChannelRequest,
                         hook: SubscribeHook) -> str | list[str]:
        """subscribe, once the limit let it through."""
        ident, channel = request.call_id, request.channel
        has_presence = self._ctx.config.channel_options(channel).presence
        if request.presence and not has_presence:
            return reply_error_frame(ident, BAD_REQUEST, f"channel {channel!r} has no "
                                     "presence to follow (its namespace turns it off)")
        asked = SubscribeRequest(channel, request.value, conn.client_id, conn.user_id,
                                 conn.conn_id, conn.metadata, request.presence)
        verdict, refusal = await guarded(self._ctx, ident, f"on_subscribe({channel!r})",
                                         conn.client_id, lambda: hook(asked))
        if refusal is not None:
            return refusal
        if verdict is False:
            return reply_error_frame(ident, FORBIDDEN, f"not allowed to subscribe to {channel!r}")
        if not (verdict is None or verdict is True or isinstance(verdict, dict)):
            # (0, "" or [] must not pass for an allowance: a hook's slip fails closed)
            logger.error("on_subscribe(%r) returned a %s, which is no verdict (None or True "
                         "allows, False refuses, a dict allows with presence metadata)",
                         channel, type(verdict).__name__)
            return reply_error_frame(ident, "internal", "internal error")
        if not conn.is_open or self._ctx.pool.get(conn.client_id) is not conn:
            # closed or replaced while the hook ran: the join would land on the client's
            # newer connection, for which the hook was never asked
            return reply_error_frame(ident, UNAVAILABLE, "not subscribed: the connection "
                                     "closed")
        meta_json = None
        if isinstance(verdict, dict):
            if not has_presence:
                logger.error("on_subscribe(%r) returned presence metadata for a channel whose "
                             "namespace turns presence off", channel)
                return reply_error_frame(ident, "internal", "internal error")
            try:
                meta_json = encode_meta(verdict)
            except ValueError as exc:
                logger.error("on_subscribe(%r) returned unusable presence metadata: %s",
                             channel, exc)
                return reply_error_frame(ident, "internal", "internal error")
        kept = self._watch.begin(conn, channel) if request.presence else None
        was_member = channel in conn.groups
        try:
            # (a leave ordered before the join, in the client's turn, spares the watcher)
            await self._membership.join(conn.client_id, channel, meta_json, landed=(
                (lambda: self._watch.joined(conn, channel)) if request.presence else None))
            if request.presence:
                try:
                    version, entries = await self._watch.read_state(channel)
                except BackendUnavailable:
                    if not was_member:  # joined, then told "not subscribed": undo the join
                        await self._membership.leave(conn.client_id, channel, asked=True)
                    raise
        except (BackendUnavailable, ConnectionNotFoundError) as exc:
            self._watch.abort(conn, channel, kept if channel in conn.groups else None)
            return reply_error_frame(ident, UNAVAILABLE, f"not subscribed: {exc}")
        except BaseException:
            self._watch.abort(conn, channel, kept if channel in conn.groups else None)
            raise
        reply = reply_frame(ident, {"channel": channel})
        if not request.presence:
            return reply
        return [reply, *self._watch.ready(conn, channel, version, entries)]

    async def unsubscribe(self, conn: Connection, request: ChannelRequest) -> str:
        """Leave the channel (any group the client is in: it need not listen to any). Its
        presence is followed until the leave lands (which ends it, as any leave does): an
        unsubscribe that fails leaves the client a member that still follows it."""
        try:
            await self._membership.leave(conn.client_id, request.channel, asked=True)
        except BackendUnavailable as exc:
            return reply_error_frame(request.call_id, UNAVAILABLE, f"not unsubscribed: {exc}")
        self._watch.abort(conn, request.channel)  # (ended already, but for a replaced socket)
        return reply_frame(request.call_id, {"channel": request.channel})

    async def publish(self, conn: Connection, request: ChannelRequest) -> str:
        """As the channel's namespace allows: ask the hook what to publish (for a member,
        or anyone); send it to the channel's members everywhere."""
        ident, channel = request.call_id, request.channel
        mode = self._ctx.config.channel_options(channel).publish
        hook = self._on_publish
        if mode == "nobody":
            return reply_error_frame(ident, FORBIDDEN, f"clients may not publish to "
                                     f"{channel!r} (its namespace takes no publications)")
        if (refusal := _not_member(conn, request, mode)) is not None:
            return refusal
        if hook is None and mode == "hook":
            return reply_error_frame(ident, FORBIDDEN, "this server takes no publications")
        data, refusal = await self._ask_publish(conn, request)
        if refusal is not None:
            return refusal
        if data is False or data is None:
            return reply_error_frame(ident, FORBIDDEN, f"not allowed to publish to {channel!r}")
        try:
            payload = encode_message(data)
        except (TypeError, ValueError) as exc:
            logger.error("on_publish(%r) returned what cannot be sent: %s", channel, exc)
            return reply_error_frame(ident, "internal", "internal error")
        # (again: the hook was awaited, and the client may have been taken out meanwhile;
        # no await between this check and the send)
        if (refusal := _not_member(conn, request, mode)) is not None:
            return refusal
        result = await self._router.publish(Target("group", channel), payload, None,
                                            json_value(data))
        if result.remote_error is not None:
            return reply_error_frame(ident, UNAVAILABLE,
                                     f"not sent to other replicas: {result.remote_error}")
        return reply_frame(ident, {"channel": channel})

    async def _ask_publish(self, conn: Connection,
                           request: ChannelRequest) -> tuple[object, str | None]:
        """What the hook makes of a publish: (data, None), or (None, the refusal's reply);
        with no hook (a members-only namespace) the data as sent."""
        hook = self._on_publish
        if hook is None:
            return request.value, None
        channel = request.channel
        asked = PublishRequest(channel, request.value, conn.client_id, conn.user_id,
                               conn.conn_id, conn.metadata)
        return await guarded(self._ctx, request.call_id, f"on_publish({channel!r})",
                             conn.client_id, lambda: hook(asked))


def _not_member(conn: Connection, request: ChannelRequest, mode: str) -> str | None:
    """The refusal of a publish to a members-only channel by a client not in it (now);
    None when it may publish as far as membership goes."""
    if mode == "members" and request.channel not in conn.groups:
        return reply_error_frame(request.call_id, FORBIDDEN, f"only members publish to "
                                 f"{request.channel!r}; subscribe first")
    return None
