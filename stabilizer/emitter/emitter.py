"""Emitter: a replica's sends, disconnects and group changes, from a process that is not a
replica.

Every operation is the one a replica performs for a client it does not hold, over the same
backend roles, Lua scripts and envelopes (pure/wire.py): a replica cannot tell an emitter's
message from another replica's, except by its origin, which no node id can equal (node ids
never contain ":"). With history on, messages are sequenced by the same script, so they
take the next offset of their stream and a resuming client replays them like any other.
The cluster does not store its settings: give the emitter the replicas' config (at least
their namespace, history settings, channel_namespaces, presence_buckets and
cluster_events).

Unlike a replica, an emitter has no local clients to fall back on: when Redis cannot be
reached every operation raises BackendUnavailable. From a send, a disconnect or a group
change, BackendNotReached (a BackendUnavailable) means it certainly took no effect; any other
BackendUnavailable means the outcome is unknown (Redis may have run it without answering in
time), and doing it again may do it twice.
"""

from __future__ import annotations

from stabilizer.backends.base import Sequenced
from stabilizer.config import CloseCode
from stabilizer.emitter.base import check_user
from stabilizer.emitter.queries import ClusterQueries
from stabilizer.errors import ConnectionNotFoundError
from stabilizer.pure.streams import Target
from stabilizer.pure.text import Message, check_close_code, check_group, encode_message
from stabilizer.pure.wire import Envelope, Kind, close_body, encode
from stabilizer.results import BroadcastResult

_JOIN, _LEAVE = "join", "leave"


class Emitter(ClusterQueries):
    """Publish-only access to a running cluster: broadcast, direct, user and group sends,
    disconnects, group membership, presence and cluster queries, with no presence of its
    own, heartbeat or node registration.

    ``Emitter(redis_url=..., namespace=...)``, ``Emitter(client=redis_client,
    namespace=...)`` or ``Emitter(config=WebSocketConfig.from_env())``; any other keyword
    is a WebSocketConfig field (``history_size=100``, ``presence_buckets=4``, ...). It
    connects on first use, serves the event loop it first ran on, and is closed with
    aclose() (or ``async with``).

    Raises:
        ConfigError: no Redis is named, `client` is no redis.asyncio client (a blocking
            redis.Redis is not one; a MemoryHub's replicas cannot be reached from outside
            their process), or a setting is invalid or unknown.
    """

    # --- sends ------------------------------------------------------------------------

    async def broadcast(self, message: Message,
                        exclude_client: str | None = None) -> BroadcastResult:
        """Send to every client on every node except `exclude_client`; serialize once.
        The result has no local counts: ``remote_nodes`` is how many nodes received it,
        ``offset``/``epoch`` its position with history.

        Raises:
            TypeError: the message is not text, bytes or JSON-serializable.
            InvalidClientIdError: `exclude_client` is not a usable client id.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        payload = encode_message(message)
        exclude = None if exclude_client is None else self._client(exclude_client)
        return await self._publish(
            Target("all"), Envelope(Kind.BROADCAST, self._origin, None, payload, exclude))

    async def send_to_group(self, group: str, message: Message,
                            exclude_client: str | None = None) -> BroadcastResult:
        """Send to every member of `group` on every node except `exclude_client` (with
        history: sequenced, unless the group's namespace keeps no history; see
        ``channel_namespaces``).

        Raises:
            ValueError: the group name is not usable.
            TypeError: the message is not text, bytes or JSON-serializable.
            InvalidClientIdError: `exclude_client` is not a usable client id.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        name = check_group(group)
        payload = encode_message(message)
        exclude = None if exclude_client is None else self._client(exclude_client)
        return await self._publish(
            Target("group", name), Envelope(Kind.GROUP, self._origin, name, payload, exclude))

    async def send_to_client(self, client_id: str, message: Message) -> bool:
        """Send to one client wherever it is; True if a node holds it (with history: or
        the message is kept for the client's resumable session).

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            TypeError: the message is not text, bytes or JSON-serializable.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        client = self._client(client_id)
        payload = encode_message(message)
        envelope = Envelope(Kind.DIRECT, self._origin, client, payload)
        backend = await self._ready()
        if self.history:
            return (await self._sequence(Target("client", client), envelope)).offset > 0
        return await self._write(backend.routing.route(client, encode(envelope)))

    async def send_to_user(self, user_id: str, message: Message) -> int:
        """Send to every connection of `user_id` on every node; return how many connections
        it reached (with history: how many the user had when it was sequenced).

        Raises:
            ValueError: the user id is not a non-empty string of at most 256 characters.
            TypeError: the message is not text, bytes or JSON-serializable.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        user = check_user(user_id)
        payload = encode_message(message)
        envelope = Envelope(Kind.USER, self._origin, user, payload)
        backend = await self._ready()
        if self.history:
            return (await self._sequence(Target("user", user), envelope)).receivers
        route = await self._write(backend.users.route(user, encode(envelope)))
        return len(route.reached)

    # --- disconnects ------------------------------------------------------------------

    async def disconnect_user(self, user_id: str, *, code: int = CloseCode.NORMAL,
                              reason: str = "disconnected by the server") -> int:
        """Close every connection of `user_id` on every node with `code`; return how many
        the nodes that received the request hold. With the default 1000 the clients do not
        reconnect and, with history, their sessions end. The reason goes as a close frame
        carries it: cut to 123 UTF-8 bytes, a lone surrogate as "?".

        Raises:
            ValueError: the user id is not usable, or `code` cannot be sent (1000, 1001,
                1008, 1011-1013, 3000-4999 can).
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        user = check_user(user_id)
        body = _close_body(code, reason)
        backend = await self._ready()
        envelope = Envelope(Kind.USER_CLOSE, self._origin, user, body)
        route = await self._write(backend.users.route(user, encode(envelope)))
        return len(route.reached)

    async def disconnect_client(self, client_id: str, *, code: int = CloseCode.NORMAL,
                                reason: str = "disconnected by the server") -> bool:
        """Close the connection of `client_id`, on whichever node holds it, with `code`;
        True if a node received the request. With history, 1000 ends its session. The
        reason goes as a close frame carries it (as disconnect_user).

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            ValueError: `code` cannot be sent (1000, 1001, 1008, 1011-1013, 3000-4999 can).
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        client = self._client(client_id)
        body = _close_body(code, reason)
        backend = await self._ready()
        envelope = Envelope(Kind.CLIENT_CLOSE, self._origin, client, body)
        return await self._write(backend.routing.route(client, encode(envelope)))

    # --- groups -----------------------------------------------------------------------

    async def join_group(self, client_id: str, group: str) -> None:
        """Add a client connected to any node to `group` (cluster-wide); its node follows
        the group from then on.

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            ValueError: the group name is not usable.
            ConnectionNotFoundError: the client is not connected anywhere.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        client, name = self._client(client_id), check_group(group)
        backend = await self._ready()
        if await self._ask(backend.presence.locate(client)) is None:
            raise ConnectionNotFoundError(f"client {client!r} is not connected")
        change = await self._write(backend.groups.join(client, name),
                                   round_trips=backend.groups.change_round_trips)
        await self._tell_owner(client, name, _JOIN, change.holder)

    async def leave_group(self, client_id: str, group: str) -> None:
        """Remove a client from `group` (no error if it was not a member).

        Raises:
            InvalidClientIdError: the client id is empty, too long or not text.
            ValueError: the group name is not usable.
            BackendUnavailable: Redis failed or did not answer: it may have taken effect
                (unless it is a BackendNotReached: then it certainly did not).
        """
        client, name = self._client(client_id), check_group(group)
        backend = await self._ready()
        change = await self._write(backend.groups.leave(client, name),
                                   round_trips=backend.groups.change_round_trips)
        await self._tell_owner(client, name, _LEAVE, change.holder)

    async def _tell_owner(self, client_id: str, group: str, action: str,
                          holder: str | None) -> None:
        """Route the change to the client's node while it stands, naming the connection it
        was written for (the node takes what Redis lists for any other)."""
        envelope = Envelope(Kind.MEMBERSHIP, self._origin, client_id, group, ref=action,
                            holder=holder)
        groups = self._backend.groups
        await self._write(groups.route_change(client_id, group, member=action == _JOIN,
                                              envelope=encode(envelope)),
                          round_trips=groups.route_round_trips)

    def _group_change_op_timeouts(self) -> int:
        """The op_timeouts the bounds of join_group add up to (leave_group's to fewer), each
        of its round trips and one more (within_round_trips): opening on first use (2 round
        trips), locating the client (1), the change and the route (as many as the layout's
        steps: GroupStore.change_round_trips, route_round_trips)."""
        groups = self._backend.groups
        return (2 + 1) + (1 + 1) + (groups.change_round_trips + 1) + (
            groups.route_round_trips + 1)

    # --- the machinery ----------------------------------------------------------------

    async def _publish(self, target: Target, envelope: Envelope) -> BroadcastResult:
        backend = await self._ready()
        if self.history and (target.kind != "group"
                             or self._config.keeps_history(target.name)):
            done = await self._sequence(target, envelope)
            return BroadcastResult(0, 0, 0, remote_nodes=done.receivers, offset=done.offset,
                                   epoch=done.epoch)
        raw = encode(envelope)
        sending = (backend.routing.publish(raw) if target.kind == "all"
                   else backend.groups.publish(target.name, raw))
        return BroadcastResult(0, 0, 0, remote_nodes=await self._write(sending))

    async def _sequence(self, target: Target, envelope: Envelope) -> Sequenced:
        """One SEQUENCE script, with the sizes and lifetimes a replica's SequencedRouter
        gives it (a direct message with several presence buckets looks the owner up
        first: two round trips)."""
        config = self._config
        return await self._write(self._backend.history.sequence(
            target, envelope, size=config.history_size, ttl=config.history_ttl,
            meta_ttl=max(config.history_ttl, config.session_ttl) + 60.0),
            round_trips=2 if target.kind == "client" else 1)


def _close_body(code: object, reason: object) -> str:
    """The close request a node carries out (close_body makes the reason carryable).

    Raises:
        ValueError: a code a server may not close with, or a reason that is not text.
    """
    if not isinstance(reason, str):
        raise ValueError(f"reason must be a string, got {type(reason).__name__}")
    return close_body(int(check_close_code(code)), reason)
