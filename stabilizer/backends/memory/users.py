"""Users in the in-process backend: each user's connections, from the hub's presence."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from stabilizer.backends.base import Presence, Seat, UserLimit, UserRoute
from stabilizer.backends.memory.hub import MemoryHub
from stabilizer.config import CloseCode
from stabilizer.errors import UserConnectionLimitError
from stabilizer.pure.users import parse_info
from stabilizer.pure.wire import Envelope, Kind, close_body, encode

if TYPE_CHECKING:
    from stabilizer.backends.memory.nodes import MemoryNode


def check_seat(hub: MemoryHub, presence: Presence, seat: Seat) -> None:
    """Refuse a connection that would take its user over the seat's limit."""
    limit = seat.max_connections
    assert presence.user_id is not None
    seats = hub.users.get(presence.user_id, {})
    if limit is not None and presence.client_id not in seats and len(seats) >= limit:
        raise UserConnectionLimitError(
            f"user {presence.user_id!r} already holds {limit} connections")


def to_user(hub: MemoryHub, user_id: str, envelope: bytes, *, but: str = "",
            kept: bool = False) -> list[str]:
    """Deliver to every node but `but` holding a connection of the user, once; return the
    client ids of the connections those nodes hold (`kept`: see MemoryHub.deliver_kept)."""
    per_node: dict[str, list[str]] = {}
    for presence in hub.users.get(user_id, {}).values():
        if presence.node_id != but:
            per_node.setdefault(presence.node_id, []).append(presence.client_id)
    return [client_id for node_id, client_ids in per_node.items()
            if (hub.deliver_kept if kept else hub.deliver)(node_id, envelope)
            for client_id in client_ids]


def seat_room(hub: MemoryHub, node_id: str, presence: Presence, limit: UserLimit,
              over: dict[tuple[str, str], None]) -> bool:
    """Whether a connection that node `node_id` resyncs may have a seat of its user: it has
    one, or the user has room, or it takes the seats of the user's newest connections that
    are newer than itself (their presence stays until their node closes them: another
    node gets a CLIENT_CLOSE naming the connection, this node's own go in `over`)."""
    if presence.user_id is None:
        return True
    seats = hub.users.get(presence.user_id, {})
    if presence.client_id in seats:
        return True
    while len(seats) >= limit.max_connections:
        newest = max(seats.values(), key=_age)
        if _age(presence) > _age(newest):
            return False
        del seats[newest.client_id]
        if newest.node_id == node_id:
            over[(newest.client_id, newest.conn_id)] = None
        else:
            body = close_body(int(CloseCode.USER_LIMIT), limit.reason)
            hub.deliver(newest.node_id, encode(Envelope(
                Kind.CLIENT_CLOSE, node_id, newest.client_id, body, ref=newest.conn_id)))
    return True


def _age(presence: Presence) -> tuple[float, str]:
    """Oldest first: when the connection was made, then its client id."""
    return presence.since, presence.client_id


def public(presence: Presence) -> Presence:
    """Presence as locate and scan return it: the user's info only comes with connections()."""
    return presence if presence.info is None else dataclasses.replace(presence, info=None)


class MemoryUsers:
    """Each user's connections, from the hub's presence."""

    def __init__(self, node: MemoryNode) -> None:
        self._node = node

    async def connections(self, user_id: str) -> list[Presence]:
        """Every connection of `user_id`, with the user's info, oldest first (as Redis)."""
        self._node.check()
        return sorted(self._node.hub.users.get(user_id, {}).values(), key=_age)

    async def count(self) -> int:
        """Users with a connection."""
        self._node.check()
        return len(self._node.hub.users)

    async def set_info(self, user_id: str, client_id: str, conn_id: str, info: str) -> bool:
        """Replace the seat's info if the seat still names `conn_id`."""
        node = self._node
        node.check()
        seat = node.hub.users.get(user_id, {}).get(client_id)
        if seat is None or seat.conn_id != conn_id:
            return False
        node.hub.set_presence(dataclasses.replace(seat, info=parse_info(info)))
        return True

    async def route(self, user_id: str, envelope: bytes) -> UserRoute:
        """Deliver to every other node holding a connection of the user."""
        node = self._node
        node.check()
        seats = node.hub.users.get(user_id, {}).values()
        elsewhere = frozenset(p.client_id for p in seats if p.node_id != node.node_id)
        return UserRoute(to_user(node.hub, user_id, envelope, but=node.node_id), elsewhere)
