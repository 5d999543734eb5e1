"""Users: every connection of an authenticated user, on any node."""

from __future__ import annotations

from stabilizer.backends.base import Presence
from stabilizer.config import CloseCode
from stabilizer.facets.base import Facet
from stabilizer.pure.text import Message, encode_message, json_value
from stabilizer.pure.users import is_user_id
from stabilizer.pure.waits import wait_seconds


class UsersFacet(Facet):
    """Sends to, disconnects and lists a user's connections (tabs, devices) cluster-wide."""

    async def send_to_user(self, user_id: str, message: Message, *, ack: bool = False,
                           timeout: float = 10.0) -> int:
        """Send to every connection of `user_id` on every node; return how many
        connections it reached (with history: how many the user had, each gets it in
        order and again on resume). 0 for an unknown or invalid user.

        With ``ack=True``, wait (up to `timeout` seconds) until every connection it reached
        acknowledged it, and return how many did (a plain-protocol client cannot), each
        once; a connection that was away when it was sent is replayed it on its return,
        but not counted.

        Raises:
            TypeError: the message is not text, bytes or JSON-serializable.
            ConfigError: `timeout` is not a finite number of seconds, 0 or more.
        """
        payload = encode_message(message)
        timeout = wait_seconds("timeout", timeout)
        if ack:
            if not is_user_id(user_id):
                return 0
            return await self._node.sessions.acks.send_to_user(
                user_id, payload, json_value(message), timeout)
        return await self._node.users.send(user_id, payload, json_value(message))

    async def disconnect_user(self, user_id: str, *, code: int = CloseCode.NORMAL,
                              reason: str = "disconnected by the server") -> int:
        """Close every connection of `user_id` on every node with `code`; return how many.
        With the default 1000 the clients do not reconnect and their sessions end.

        Raises:
            ValueError: `code` cannot be sent (1000, 1001, 1008, 1011-1013, 3000-4999 can).
        """
        return await self._node.users.disconnect(user_id, int(code), reason)

    async def get_user_connections(self, user_id: str) -> list[Presence]:
        """Return every connection of `user_id` (client id, node, connected since, the
        user's info), oldest first.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._node.users.connections(user_id)

    async def get_cluster_user_count(self) -> int:
        """Count users with at least one connection on any node.

        Raises:
            BackendUnavailable: the shared store cannot be reached.
        """
        return await self._node.users.count()
