"""The Pool: this node's connections by client id, in the order they connected."""

from __future__ import annotations

from collections.abc import Iterator

from stabilizer.connection.connection import Connection


class Pool:
    """This node's connections by client id, in the order they connected.

    A fan-out visits connections in that order (the order their sockets and buffers were
    allocated: measurably cheaper than a hash-scattered walk at thousands of sockets) and
    cuts its snapshot into ``num_shards`` slices. An asyncio node has one thread, so there is
    no lock to shard; the fan-out itself yields to the loop every max_concurrent_broadcast
    recipients, so a large fan-out never stalls the loop.
    """

    __slots__ = ("_conns", "_slices", "_users")

    def __init__(self, num_shards: int) -> None:
        self._conns: dict[str, Connection] = {}
        self._slices = num_shards
        self._users: dict[str, dict[str, Connection]] = {}  # user -> client id -> conn

    def __len__(self) -> int:
        return len(self._conns)

    def get(self, client_id: str) -> Connection | None:
        """Return the live connection of `client_id`, if any."""
        return self._conns.get(client_id)

    def put(self, conn: Connection) -> Connection | None:
        """Add `conn`, returning the connection it replaces (same client id), if any.

        A connection that began to close is not added (its close, past, took nothing out:
        no later one would), but what it replaces is taken out all the same: the client
        opened a newer socket, if only to close it.
        """
        previous = self._conns.pop(conn.client_id, None)
        if previous is not None:  # the newcomer takes the end of the order
            self._unseat(previous)
        if not conn.is_open:
            return previous
        self._conns[conn.client_id] = conn
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, {})[conn.client_id] = conn
        return previous

    def remove(self, conn: Connection) -> bool:
        """Remove `conn` only if it is still the one registered for its client id."""
        if self._conns.get(conn.client_id) is not conn:
            return False
        del self._conns[conn.client_id]
        self._unseat(conn)
        return True

    def _unseat(self, conn: Connection) -> None:
        if conn.user_id is None:
            return
        seats = self._users.get(conn.user_id)
        if seats is not None and seats.get(conn.client_id) is conn:
            del seats[conn.client_id]
            if not seats:
                del self._users[conn.user_id]

    def of_user(self, user_id: str) -> list[Connection]:
        """Return the local connections of `user_id`."""
        seats = self._users.get(user_id)
        return list(seats.values()) if seats else []

    def user_ids(self) -> list[str]:
        """Return every user with a local connection."""
        return list(self._users)

    def shards(self) -> Iterator[list[Connection]]:
        """Yield the connections as of now, in connection order, in ``num_shards`` slices."""
        snapshot = list(self._conns.values())
        if not snapshot:
            return
        size = -(-len(snapshot) // self._slices)
        for start in range(0, len(snapshot), size):
            yield snapshot[start:start + size]

    def client_ids(self) -> list[str]:
        """Return every local client id."""
        return list(self._conns)

    def connections(self) -> Iterator[Connection]:
        """Iterate every connection (do not await while iterating)."""
        return iter(self._conns.values())
