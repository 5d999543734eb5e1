"""Doubts: what may have put this node's memberships out of step with the backend.

Two kinds. A lost subscription may have taken MEMBERSHIP envelopes with it: every local
membership is in doubt until a node-wide settle that began once the subscription was back.
A membership change that failed or was cancelled may have run in part (spread: between its
slots' steps): its client is in doubt until a settle of it (maintenance settles the doubted
clients at each step, and a node-wide settle takes them too) reconciles it, wherever it is
connected by then.
"""

from __future__ import annotations

from collections.abc import Collection


class Doubts:
    """Lost subscriptions not yet covered by a settle, and clients whose change failed."""

    def __init__(self) -> None:
        self._losses = 0  # subscriptions lost
        self._settled = 0  # the losses a node-wide settle after resubscribing covered
        self._clients: set[str] = set()

    def subscription_lost(self) -> None:
        """The listener lost its subscription."""
        self._losses += 1

    @property
    def node_wide(self) -> bool:
        """True from a lost subscription until a settle that covers it."""
        return self._losses != self._settled

    def change_failed(self, client_id: str) -> None:
        """A change of `client_id`'s memberships got no answer (it may have run in part)."""
        self._clients.add(client_id)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._clients

    def take_clients(self) -> set[str]:
        """The doubted clients, for a settle of them alone (give them back if it fails)."""
        clients, self._clients = self._clients, set()
        return clients

    def begin_settle(self) -> tuple[int, set[str]]:
        """A node-wide settle begins: the losses it will cover, and the doubted clients it
        takes (give them back if it fails)."""
        clients, self._clients = self._clients, set()
        return self._losses, clients

    def give_back(self, clients: Collection[str]) -> None:
        """A settle that took `clients` failed: they stay in doubt."""
        self._clients.update(clients)

    def settled(self, losses: int) -> None:
        """A node-wide settle that began while subscribed, after `losses`, is done."""
        self._settled = max(self._settled, losses)
