"""Acknowledged sends, the pure part (docs/protocol.md 6.7): the token a message frame
carries for the client to echo, naming the node that waits for it and its reference there.
"""

from __future__ import annotations

import re
from typing import Final

from stabilizer.pure.v2 import ProtocolError

#: The payload of an ACK envelope that says the client cannot acknowledge (plain protocol).
UNSUPPORTED: Final = "unsupported"
#: ... that says the client's node stopped awaiting it: the client had too many messages
#: unacknowledged (a connection keeps the newest 1,024 tokens).
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
