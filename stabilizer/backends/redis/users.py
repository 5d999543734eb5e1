"""Users in Redis: one hash per user (client_id -> ``node|conn|since_us|info_json``) and
the set of users with a connection, kept by the presence scripts; one script reaches every
node holding a connection of a user."""

from __future__ import annotations

from stabilizer.backends.base import Presence, UserRoute
from stabilizer.backends.redis.core import RedisCore, text
from stabilizer.backends.redis.keys import parse_seat


class RedisUsers:
    """Each user's connections, cluster-wide."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def connections(self, user_id: str) -> list[Presence]:
        """HGETALL the user's hash."""
        core = self._core
        entries = await core.call(core.client.hgetall(core.keys.user(user_id)), "user")
        found = [parse_seat(user_id, text(client_id), raw) for client_id, raw in entries.items()]
        return sorted((p for p in found if p is not None), key=lambda p: (p.since, p.client_id))

    async def count(self) -> int:
        """SCARD of the users set."""
        core = self._core
        return int(await core.call(core.client.scard(core.keys.users), "user_count"))

    async def set_info(self, user_id: str, client_id: str, conn_id: str, info: str) -> bool:
        """One script: replace the seat's info if the seat still names `conn_id`."""
        core = self._core
        done = await core.call(core.scripts.seat_info(
            keys=[core.keys.user(user_id)], args=[client_id, conn_id, info]), "user_info")
        return bool(done)

    async def route(self, user_id: str, envelope: bytes) -> UserRoute:
        """One script: publish to every other node holding a connection of the user."""
        core = self._core
        keys = core.keys
        reached, elsewhere = await core.call(core.scripts.user_route(
            keys=[keys.user(user_id)],
            args=[keys.sequenced_direct_prefix, envelope, core.publish_command, core.node_id],
        ), "user_route")
        return UserRoute([text(client_id) for client_id in reached],
                         frozenset(text(client_id) for client_id in elsewhere))
