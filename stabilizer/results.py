"""Result records returned by the manager: broadcast, shutdown."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BroadcastResult:
    """What one broadcast did on this node, and whether it reached the other nodes.

    - ``total``: local recipients targeted (the excluded client is not counted).
    - ``succeeded``: local recipients whose outbox accepted the frame. Delivery to the socket
      happens right after, without the broadcaster waiting for it.
    - ``failed``: local recipients that could not take the frame (their outbox overflowed, so
      they are closed with 1013, or their socket was already closing).
    - ``errors``: one ``(client_id, reason)`` per failure.
    - ``remote_nodes``: other nodes the message was handed to (0 on the embedded backend).
    - ``remote_error``: ``None``, or why the message could not be handed to other nodes (for
      example Redis being down); local clients got it anyway. With history, only when Redis
      certainly was not reached (``"not sequenced, delivered locally only: ..."``); when it
      took the message but did not answer in time (``"outcome unknown, ..."``) nothing was
      delivered locally: if it was sequenced, every node delivers it from its stream, this
      one included, and otherwise it is lost.
    - ``offset`` / ``epoch``: with history enabled, the message's position in its stream.
      Delivery then goes through every node's ordered listener, this one included, so the
      local counts are 0 and ``remote_nodes`` counts the other nodes that received it.
    """

    total: int
    succeeded: int
    failed: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    remote_nodes: int = 0
    remote_error: str | None = None
    offset: int | None = None
    epoch: str | None = None

    @property
    def complete(self) -> bool:
        """True when every local recipient took the frame and other nodes were reached."""
        return self.failed == 0 and self.remote_error is None


@dataclass(slots=True)
class ShutdownReport:
    """What graceful_shutdown did.

    - ``closed_count``: sockets that received their close frame before the deadline.
    - ``failed_count``: sockets whose close frame did not go out: aborted because it could not
      be sent in time, or the socket raised (as fastapi-websocket-stabilizer counted them).
    - ``duration_seconds``: wall time of the whole shutdown.
    - ``drained_frames``: frames still queued at shutdown that were written before closing.
    - ``dropped_frames``: frames still queued when the deadline passed, thrown away.
    - ``close_code``: the code sent to clients (1001, or 1012 when the node is restarting).
    """

    closed_count: int
    failed_count: int
    duration_seconds: float
    drained_frames: int = 0
    dropped_frames: int = 0
    close_code: int = 1001


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """What on_connect / on_disconnect hooks receive.

    ``code`` and ``reason`` are set for disconnects: the close code sent (or received) and
    why; ``resumed`` tells whether a connect resumed a session with a token.
    """

    client_id: str
    conn_id: str
    node_id: str
    resumed: bool = False
    code: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """A cluster-wide event: ``connect``, ``disconnect``, ``join`` or ``leave`` (a group)."""

    event: str
    client_id: str
    group: str | None
    node_id: str
