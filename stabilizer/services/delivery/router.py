"""How messages travel between nodes: one Router per node, picked once at start.

LiveRouter (history off): the origin delivers to its own clients at once and hands the
message to the other nodes in one publish. SequencedRouter (history on): every message is
sequenced by the backend and reaches every node, the origin included, through its
subscription, so all nodes deliver each stream in the same order.
"""

from __future__ import annotations

from typing import Protocol

from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope
from stabilizer.results import BroadcastResult


class Router(Protocol):
    """The delivery mode of a node."""

    async def publish(self, target: Target, payload: str | bytes, exclude: str | None,
                      value: object = None) -> BroadcastResult:
        """Deliver to every recipient of an ``all`` or ``group`` target on every node;
        `value` is the JSON object `payload` was serialized from, if any."""
        ...

    async def send(self, client_id: str, payload: str | bytes, value: object = None,
                   ack: str | None = None) -> bool:
        """Deliver to one client wherever it is; True if some node took it (with history:
        or it is kept for the client's resumable session). With `ack` (a reference of this
        node) the client is asked to acknowledge it (see services/acks.py)."""
        ...

    async def send_to_user(self, user_id: str, payload: str | bytes,
                           value: object = None, ack: str | None = None) -> list[str]:
        """Deliver to every connection of a user wherever it is; return the client ids of
        the connections it reached (with history: those the user had when it was
        sequenced). With `ack`, each connection is asked to acknowledge it."""
        ...

    async def receive(self, envelope: Envelope) -> None:
        """Deliver a BROADCAST, GROUP, DIRECT or USER envelope the listener received."""
        ...

    def resubscribing(self) -> None:
        """The listener lost its subscription and is about to subscribe again."""
        ...

    def follow(self, stream: str, offset: int, epoch: str) -> None:
        """A local connection receives `stream` from (offset, epoch) on."""
        ...

    def delivered_after(self, stream: str, offset: int, epoch: str) -> bool:
        """True when this node delivered messages of `stream` after (offset, epoch)
        already (a connection admitted meanwhile, whose session began there, missed them)."""
        ...

    def unfollow(self, stream: str) -> None:
        """No local connection receives `stream` any more."""
        ...
