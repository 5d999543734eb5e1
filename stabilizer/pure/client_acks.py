"""The acknowledgements a v2 client owes (docs/protocol.md 6.7), pure: the socket each one
goes on, and where a resume starts so that the one of a closed socket can still be sent.

A node takes the acknowledgement of a token only on the socket it sent the token on. A
message the application has not handled yet (waiting in the inbox, or taken and still being
handled) when that socket closes has its acknowledgement nowhere to go; and a resume that
started after the last message received would not send it again, so the sender's wait
would end in AckTimeoutError although the application handles the message. So, with
history, a resume starts each stream just before its oldest message whose acknowledgement
is owed: the replay brings that message, and those after it, again. The client holds them
already and drops the copies as duplicates, but each copy's token now belongs to the new
socket, and the acknowledgement goes there once the application handled the message (at
once when it has). After the replay, an acknowledgement still bound to an older socket has
nowhere to go: the resume did not bring it again (its stream was trimmed or lost, or the
session was not resumed: the server ended the send's wait then).

The client's own positions stay what it received (duplicates are told by them); only what
a resume sends moves back. No I/O here: client/acks.py sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
#: Where a sequenced message stands: its stream, offset and epoch.
Place = tuple[str, int, str]


@dataclass(slots=True)
class _Owed(Generic[S]):
    socket: S  # the socket that brought the token last: the only one it is taken on
    place: Place | None  # None: no resume brings it again (unsequenced, or it is past)
    handled: bool = False  # the application is done with it; the socket was gone


class OwedAcks(Generic[S]):
    """Per token, the acknowledgement owed for a message the application has not handled,
    or handled while its socket was gone."""

    def __init__(self) -> None:
        self._owed: dict[str, _Owed[S]] = {}

    def __len__(self) -> int:
        return len(self._owed)

    def owe(self, token: str, socket: S, place: Place | None) -> None:
        """A message carrying `token` came on `socket` for the application; `place` is
        where it stands in its stream, if it is sequenced."""
        self._owed[token] = _Owed(socket, place)

    def again(self, token: str, socket: S) -> bool:
        """A copy of a message the client holds (a duplicate, replayed) brought `token` on
        `socket`: True when the acknowledgement waits for the application (it goes on
        `socket` now); False when it is due at once, on `socket` (the application handled
        the message, or the token is not owed: a duplicate is acknowledged regardless)."""
        owed = self._owed.get(token)
        if owed is None or owed.handled:
            self._owed.pop(token, None)
            return False
        owed.socket = socket
        return True

    def due(self, token: str) -> S | None:
        """The socket the acknowledgement of `token` goes on, now that the application
        handled its message; None when there is none to send now."""
        owed = self._owed.get(token)
        return None if owed is None or owed.handled else owed.socket

    def sent(self, token: str, socket: S, *, written: bool) -> bool:
        """The acknowledgement of `token` was `written` on `socket`, or not (the socket was
        gone): False when it must go again, on the socket due() now names (a replayed copy
        brought the token on another socket meanwhile)."""
        owed = self._owed.get(token)
        if owed is None or owed.handled:
            return True
        if owed.socket is not socket:
            return False
        if written or owed.place is None:
            del self._owed[token]
        else:  # the resume's replay brings the token again: acknowledged when it comes
            owed.handled = True
        return True

    def replayed(self, socket: S) -> None:
        """The resume onto `socket` replayed what it would: a token it did not bring again
        stays bound to a closed socket, and no later resume brings it either."""
        for token, owed in list(self._owed.items()):
            if owed.socket is socket:
                continue
            if owed.handled:
                del self._owed[token]
            else:
                owed.place = None

    def resume_from(self, positions: Mapping[str, tuple[int, str]]
                    ) -> dict[str, tuple[int, str]]:
        """The `positions` a resume sends, each stream moved back to just before its oldest
        message whose acknowledgement is owed (in the same epoch: another epoch's cannot be
        replayed); a stream whose such message is at offset 0 is left out (the server then
        replays it from where the session began)."""
        start = dict(positions)
        for owed in self._owed.values():
            if owed.place is None:
                continue
            stream, offset, epoch = owed.place
            at = start.get(stream)
            if at is not None and at[1] == epoch and offset <= at[0]:
                start[stream] = (offset - 1, epoch)
        return {stream: at for stream, at in start.items() if at[0] >= 0}
