"""Acknowledged sends, the pure part (docs/protocol.md 6.7): the token a message frame
carries for the client to echo, naming the node that waits for it and its reference there,
and the tally of what came back for one send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from stabilizer.pure.v2 import ProtocolError

#: The payload of an ACK envelope that says the client cannot acknowledge (plain protocol).
UNSUPPORTED: Final = "unsupported"
#: ... that says the client's node stopped awaiting it: the client had too many messages
#: unacknowledged (a connection keeps the newest 1,024 tokens), or its connection ended
#: without a session to resume (no replay carries the token again).
FORGOTTEN: Final = "forgotten"
_TOKEN: Final = re.compile(r"([0-9a-f]{16})@([A-Za-z0-9._-]{1,128})")


def ack_token(origin: str, ref: str) -> str:
    """The token of message `ref` that node `origin` waits for."""
    return f"{ref}@{origin}"


def parse_ack_token(token: object) -> tuple[str, str]:
    """(origin node, ref) of a token a client sent back.

    Raises:
        ProtocolError: not a token this server could have written.
    """
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise ProtocolError("ack: id must be the ack of a message frame")
    return match.group(2), match.group(1)


class AckTally:
    """What came back for one acknowledged send, by the client that answered.

    One token goes to every copy of the message: to each connection it reached, and with
    history to whichever connection of the user is replayed it later. Only the clients the
    send reached (`address`) count, each once, with its first answer: a copy replayed to a
    client that was away when it was sent, or replayed again to one that already answered
    (it resumed from an earlier position), changes nothing. Answers may come before the
    addressees are known (a local client can acknowledge while the send still waits for
    the store); they are kept and sorted out then.
    """

    __slots__ = ("_addressed", "_answers")

    def __init__(self) -> None:
        self._addressed: frozenset[str] | None = None
        self._answers: dict[str, str | None] = {}  # client id -> its first outcome

    def address(self, client_ids: Iterable[str]) -> None:
        """The send reached these clients: the answers of no others count."""
        self._addressed = frozenset(client_ids)

    def answer(self, client_id: str, outcome: str | None) -> None:
        """`client_id` acknowledged (`outcome` None), cannot (UNSUPPORTED) or its node no
        longer waits for it to (FORGOTTEN); a later answer of the same client is ignored."""
        self._answers.setdefault(client_id, outcome)

    @property
    def settled(self) -> bool:
        """True once every client the send reached answered."""
        addressed = self._addressed
        return addressed is not None and addressed.issubset(self._answers)

    def count(self, outcome: str | None) -> int:
        """How many of the clients the send reached answered with `outcome` (None: how
        many acknowledged)."""
        addressed = self._addressed or frozenset()
        return sum(1 for client_id, got in self._answers.items()
                   if got == outcome and client_id in addressed)
