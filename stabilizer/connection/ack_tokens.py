"""The ack tokens one connection was sent and its client has not acknowledged yet
(docs/protocol.md 6.7): the newest MAX_ACKS of them, oldest first, and what they hold in
memory, kept as they come and go so that the memory guard reads it without a walk."""

from __future__ import annotations

from typing import Final

MAX_ACKS: Final = 1024  # unacknowledged ack tokens a connection remembers
#: What one token costs beside its characters: the str object's header and its dict slot
#: (docs/migration.md says "about 96 bytes").
TOKEN_OVERHEAD_BYTES: Final = 96


def token_bytes(token: str) -> int:
    """Approximate bytes a remembered token holds."""
    return TOKEN_OVERHEAD_BYTES + len(token)


class AckTokens:
    """Tokens awaiting acknowledgement, oldest first; over MAX_ACKS the oldest is forgotten
    (and kept aside until its sender is told)."""

    __slots__ = ("_bytes", "_forgotten", "_tokens")

    def __init__(self) -> None:
        self._tokens: dict[str, None] = {}
        self._forgotten: list[str] | None = None
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Approximate bytes the remembered tokens hold (the forgotten ones included)."""
        return self._bytes

    @property
    def awaiting(self) -> bool:
        """True while a token is awaited."""
        return bool(self._tokens)

    def expect(self, token: str) -> None:
        """A frame carrying `token` was sent."""
        tokens = self._tokens
        if len(tokens) >= MAX_ACKS:  # too many unacknowledged: forget the oldest
            oldest = next(iter(tokens))
            del tokens[oldest]
            if self._forgotten is None:
                self._forgotten = []
            self._forgotten.append(oldest)  # (its bytes stay counted until it is taken)
        tokens[token] = None
        self._bytes += token_bytes(token)

    def take(self, token: str) -> bool:
        """The client acknowledged `token`: True if it was awaited (each is taken once)."""
        if token not in self._tokens:
            return False
        del self._tokens[token]
        self._bytes -= token_bytes(token)
        return True

    def take_forgotten(self, *, awaited: bool = False) -> list[str]:
        """The tokens forgotten since the last call, with `awaited` all those still awaited
        too (the connection ended): their senders must be told."""
        forgotten, self._forgotten = self._forgotten or [], None
        if awaited and self._tokens:
            forgotten.extend(self._tokens)
            self._tokens = {}
        for token in forgotten:
            self._bytes -= token_bytes(token)
        return forgotten
