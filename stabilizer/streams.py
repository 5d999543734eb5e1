"""History-mode bookkeeping (pure): client frames with positions, per-stream order, positions
sent by resuming clients.

Redis pub/sub is at-most-once. Every sequenced message carries (offset, epoch) and offsets
grow by exactly one per stream, so a node that remembers the last offset it delivered per
stream sees a gap as soon as a later message arrives, and fills it from history.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import Enum
from typing import Final

MAX_POSITIONS: Final = 1000
MAX_POSITIONS_TEXT: Final = 64 * 1024


class PositionsError(ValueError):
    """A client sent positions that are not the documented shape."""


def message_frame(stream: str, offset: int | None, epoch: str | None,
                  payload: str | bytes) -> str:
    """The client frame of a sequenced message (protocol section 4), built once per message.

    Offset and epoch are null when the message could not be sequenced (backend down).
    """
    body: dict[str, object] = {"type": "message", "stream": stream, "offset": offset,
                               "epoch": epoch}
    if isinstance(payload, str):
        body["data"] = payload
    else:
        body["data_b64"] = base64.b64encode(payload).decode("ascii")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def resume_frame(replayed: int, failed: list[str]) -> str:
    """The frame that ends a replay: recovered, count, and the streams that could not be."""
    return json.dumps({"type": "resume", "recovered": not failed, "replayed": replayed,
                       "failed": failed}, separators=(",", ":"), ensure_ascii=False)


def parse_positions(text: str | None) -> dict[str, tuple[int, str]]:
    """Parse the ``positions`` query parameter: ``{"stream": [offset, "epoch"], ...}``.

    Raises:
        PositionsError: for anything else (the server closes with 1008).
    """
    if not text:
        return {}
    if len(text) > MAX_POSITIONS_TEXT:
        raise PositionsError("positions too long")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise PositionsError("positions is not JSON") from exc
    if not isinstance(raw, dict) or len(raw) > MAX_POSITIONS:
        raise PositionsError("positions must be an object of at most 1000 streams")
    parsed: dict[str, tuple[int, str]] = {}
    for stream, position in raw.items():
        valid = (
            isinstance(position, list) and len(position) == 2
            and isinstance(position[0], int) and not isinstance(position[0], bool)
            and position[0] >= 0 and isinstance(position[1], str) and 0 < len(position[1]) <= 64
        )
        if not valid:
            raise PositionsError(f"position of stream {stream!r} must be [offset, \"epoch\"]")
        parsed[stream] = (position[0], position[1])
    return parsed


class Step(Enum):
    """What to do with a sequenced message, given what this node delivered before."""

    DELIVER = 1  # next in line (or the first seen, or a new epoch)
    DUPLICATE = 2  # already delivered: drop
    GAP = 3  # messages are missing before it: fill from history first


@dataclass(slots=True)
class _Last:
    epoch: str
    offset: int


class StreamOrder:
    """The last offset this node delivered on each stream it follows."""

    def __init__(self) -> None:
        self._last: dict[str, _Last] = {}

    def __len__(self) -> int:
        return len(self._last)

    def classify(self, stream: str, offset: int, epoch: str) -> Step:
        """Decide what to do with (offset, epoch) on `stream`."""
        last = self._last.get(stream)
        if last is None or last.epoch != epoch:
            return Step.DELIVER
        if offset <= last.offset:
            return Step.DUPLICATE
        if offset == last.offset + 1:
            return Step.DELIVER
        return Step.GAP

    def last(self, stream: str) -> tuple[int, str] | None:
        """(offset, epoch) of the last delivered message on `stream`, if any."""
        last = self._last.get(stream)
        return None if last is None else (last.offset, last.epoch)

    def advance(self, stream: str, offset: int, epoch: str) -> None:
        """Record that (offset, epoch) was delivered."""
        last = self._last.get(stream)
        if last is None or last.epoch != epoch or offset > last.offset:
            self._last[stream] = _Last(epoch, offset)

    def streams(self) -> list[str]:
        """The streams followed, in no particular order."""
        return list(self._last)

    def forget(self, stream: str) -> None:
        """Stop following `stream` (no local subscriber left)."""
        self._last.pop(stream, None)
