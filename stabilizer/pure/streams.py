"""History streams (pure): their names, where a sequenced message goes, and the order a node
delivers each stream in.

Every sequenced message belongs to one stream: ``all`` (broadcasts), ``g:<group>`` (a
group's messages), ``c:<client_id>`` (direct messages to one client) or ``u:<user_id>``
(messages to every connection of one user). Redis pub/sub is
at-most-once; every sequenced message carries (offset, epoch) and offsets grow by exactly one
per stream, so a node that remembers the last offset it delivered per stream sees a gap as
soon as a later message arrives, and fills it from history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

ALL: Final = "all"
_GROUP_PREFIX: Final = "g:"
_CLIENT_PREFIX: Final = "c:"
_USER_PREFIX: Final = "u:"

TargetKind = Literal["all", "group", "client", "user"]


def group_stream(group: str) -> str:
    """The stream of one group's messages."""
    return _GROUP_PREFIX + group


def client_stream(client_id: str) -> str:
    """The stream of one client's direct messages."""
    return _CLIENT_PREFIX + client_id


def user_stream(user_id: str) -> str:
    """The stream of the messages to one user (every connection of the user follows it)."""
    return _USER_PREFIX + user_id


def session_streams(client_id: str, user_id: str | None) -> list[str]:
    """The streams every session of `client_id` receives, groups aside: ``all``, its own
    and, for a user's connection, the user's (those a fresh session records baselines
    of)."""
    streams = [ALL, client_stream(client_id)]
    if user_id is not None:
        streams.append(user_stream(user_id))
    return streams


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes: everyone, the members of a group, one client, or every
    connection of one user."""

    kind: TargetKind
    name: str = ""

    @property
    def stream(self) -> str:
        """The history stream of this target."""
        if self.kind == "all":
            return ALL
        if self.kind == "group":
            return group_stream(self.name)
        return client_stream(self.name) if self.kind == "client" else user_stream(self.name)

    @classmethod
    def of_stream(cls, stream: str) -> Target | None:
        """The target a stream name belongs to; None for a name no target has."""
        if stream == ALL:
            return cls("all")
        if stream.startswith(_GROUP_PREFIX) and len(stream) > len(_GROUP_PREFIX):
            return cls("group", stream[len(_GROUP_PREFIX):])
        if stream.startswith(_CLIENT_PREFIX) and len(stream) > len(_CLIENT_PREFIX):
            return cls("client", stream[len(_CLIENT_PREFIX):])
        if stream.startswith(_USER_PREFIX) and len(stream) > len(_USER_PREFIX):
            return cls("user", stream[len(_USER_PREFIX):])
        return None


class Step(Enum):
    """What to do with a sequenced message, given what this node delivered before."""

    DELIVER = 1  # next in line (or the first seen, or the first of a new epoch)
    DUPLICATE = 2  # already delivered: drop
    GAP = 3  # messages are missing before it: fill from history first


@dataclass(slots=True)
class _Last:
    epoch: str
    offset: int
    advanced_at: float | None = None  # (StreamOrder) when a message of it was last delivered


class StreamOrder:
    """The last offset this node delivered on each stream it follows.

    A stream may be followed from offset 0 of epoch ``""``: from before its first message,
    whatever epoch that message begins (a session that began before the stream had one).
    A new epoch starts at offset 1, so a later first message of an epoch reveals a gap
    like any other.

    It also keeps when (a monotonic clock reading, passed in) each stream last advanced: a
    stream the store no longer holds cannot have expired if it advanced less than its meta
    TTL ago (see lost_if_absent).
    """

    def __init__(self) -> None:
        self._last: dict[str, _Last] = {}

    def __len__(self) -> int:
        return len(self._last)

    def classify(self, stream: str, offset: int, epoch: str) -> Step:
        """Decide what to do with (offset, epoch) on `stream`."""
        last = self._last.get(stream)
        if last is None:
            return Step.DELIVER
        if last.epoch != epoch:
            return Step.DELIVER if offset == 1 else Step.GAP
        if offset <= last.offset:
            return Step.DUPLICATE
        if offset == last.offset + 1:
            return Step.DELIVER
        return Step.GAP

    def last(self, stream: str) -> tuple[int, str] | None:
        """(offset, epoch) of the last delivered message on `stream`, if any."""
        last = self._last.get(stream)
        return None if last is None else (last.offset, last.epoch)

    def advance(self, stream: str, offset: int, epoch: str, now: float) -> None:
        """Record that (offset, epoch) was delivered at `now`."""
        last = self._last.get(stream)
        if last is None or last.epoch != epoch or offset > last.offset:
            self._last[stream] = _Last(epoch, offset, now)

    def lost_if_absent(self, stream: str, now: float, meta_ttl: float) -> bool:
        """True when a store that holds nothing of `stream` must have lost it: this node
        delivered one of its messages less than `meta_ttl` seconds (the TTL of the stream's
        offset and epoch, which every message renews) before `now`, so it cannot have
        expired. False when it may have: nothing advanced it here for that long, or it
        never did (followed from a baseline or a resumed position only).

        Residual ambiguity, both ways: a message is sequenced a little before a node
        delivers it, and a catch-up delivers old ones late, so a stream that expired just
        now can read as lost (its clients resync for nothing; the safe side). And a stream
        silent here for `meta_ttl`, then sent one message that the store lost before this
        node read it back, reads as expired: only the store could tell, and it forgot.
        """
        last = self._last.get(stream)
        return (last is not None and last.advanced_at is not None
                and now - last.advanced_at < meta_ttl)

    def start(self, stream: str, offset: int, epoch: str) -> None:
        """Follow `stream` from (offset, epoch) unless it is followed already."""
        if stream not in self._last:
            self._last[stream] = _Last(epoch, offset)

    def start_over(self, stream: str, epoch: str) -> None:
        """Follow `stream` from before the first message of `epoch` (the epoch it was on
        ended; "": whichever epoch comes next, as the store lost the stream)."""
        self._last[stream] = _Last(epoch, 0)

    def streams(self) -> list[str]:
        """The streams followed, in no particular order."""
        return list(self._last)

    def forget(self, stream: str) -> None:
        """Stop following `stream` (no local subscriber left)."""
        self._last.pop(stream, None)


class ClientPositions:
    """The position one connection holds on each stream it receives: where its client said
    it stood when it resumed, then the last message it was sent.

    The node's stream order is not enough: a client may resume on a node whose listener
    lags behind the client (it lost its subscription), and when that node catches up it
    delivers what the client already has. A message at or before the held position, in the
    same epoch, is one of those; a new epoch starts the stream again.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, _Last] = {}

    def admit(self, stream: str, offset: int, epoch: str) -> bool:
        """True, and the position moves to (offset, epoch), when the message is past the
        position held on `stream`; False for one the client already has."""
        last = self._held.get(stream)
        if last is None:
            self._held[stream] = _Last(epoch, offset)
        elif last.epoch != epoch:
            last.epoch, last.offset = epoch, offset
        elif offset > last.offset:
            last.offset = offset
        else:
            return False
        return True

    def held(self, stream: str) -> tuple[int, str] | None:
        """(offset, epoch) held on `stream`, if any."""
        last = self._held.get(stream)
        return None if last is None else (last.offset, last.epoch)

    def holding(self, streams: Iterable[str]) -> dict[str, tuple[int, str]]:
        """(offset, epoch) held on each of `streams` that has one."""
        return {stream: at for stream in streams if (at := self.held(stream)) is not None}


def begun_since(baselines: Mapping[str, tuple[int, str]],
                held: Mapping[str, tuple[int, str]]) -> bool:
    """Whether a session with `baselines` began after a connection was sent `held` (its
    client's position per stream): on every stream both name the baseline is at or past
    the position, in the same epoch, so a replay of that session carries nothing the
    connection was sent on them. False when no stream tells (none shared, another epoch):
    a session resumed since began before everything its connections were sent."""
    shared = [(baselines[stream], at) for stream, at in held.items() if stream in baselines]
    return bool(shared) and all(base[1] == at[1] and base[0] >= at[0] for base, at in shared)
