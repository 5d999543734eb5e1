"""The ``positions`` a resuming client sends (pure): parsed with bounds on size and depth
before any work is done.

The shape is ``{"<stream>": [offset, "<epoch>"], ...}``: at most 1,000 streams in at most
64 KiB of text, nested exactly two deep. Anything else raises PositionsError, which the
session turns into a 1008 refusal.
"""

from __future__ import annotations

from typing import Final

from stabilizer.pure.json_input import loads

MAX_POSITIONS: Final = 1000
MAX_POSITIONS_TEXT: Final = 64 * 1024
MAX_EPOCH_LENGTH: Final = 64
#: Offsets are Lua numbers (doubles) in Redis scripts: beyond 2**53 they lose precision.
MAX_OFFSET: Final = 2**53
_DEPTH: Final = 2
#: The characters an entry takes besides its stream and epoch: ``"":[<offset>,""],``.
_ENTRY_OVERHEAD: Final = 10

Positions = dict[str, tuple[int, str]]


class PositionsError(ValueError):
    """A client sent positions that are not the documented shape."""


def parse_positions(text: str | None) -> Positions:
    """Parse the ``positions`` query parameter: ``{"stream": [offset, "epoch"], ...}``.

    Raises:
        PositionsError: for anything else (the server closes with 1008).
    """
    if not text:
        return {}
    if len(text) > MAX_POSITIONS_TEXT:
        raise PositionsError(f"positions longer than {MAX_POSITIONS_TEXT} characters")
    try:
        raw = loads(text, _DEPTH)
    except ValueError as exc:  # malformed, too deep, or a lone surrogate
        raise PositionsError(f"positions must be JSON ({exc})") from exc
    return positions_of(raw)


def positions_of(raw: object) -> Positions:
    """Check decoded positions (a v2 ``connect`` frame's ``positions`` field).

    Raises:
        PositionsError: not ``{"stream": [offset, "epoch"], ...}`` within the bounds.
    """
    if not isinstance(raw, dict) or len(raw) > MAX_POSITIONS:
        raise PositionsError(f"positions must be an object of at most {MAX_POSITIONS} streams")
    parsed: Positions = {}
    size = 0
    for stream, position in raw.items():
        if not _is_position(position):
            raise PositionsError(f"position of stream {stream[:40]!r} must be [offset, \"epoch\"]")
        size += len(stream) + len(position[1]) + _ENTRY_OVERHEAD
        if size > MAX_POSITIONS_TEXT:  # (a v2 connect frame's, parsed with the frame)
            raise PositionsError(f"positions longer than {MAX_POSITIONS_TEXT} characters")
        parsed[stream] = (position[0], position[1])
    return parsed


def _is_position(value: object) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    offset, epoch = value
    return (
        isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset <= MAX_OFFSET
        and isinstance(epoch, str) and 0 < len(epoch) <= MAX_EPOCH_LENGTH
    )


def replay_start(claimed: tuple[int, str] | None,
                 baseline: tuple[int, str] | None) -> tuple[int, str] | None:
    """Where a resume replays a stream from: the position the client claims, but never
    before the session's `baseline` for it (where the stream stood when the session began,
    or the client last joined the group), so that no claim reaches what came before.

    A baseline with no epoch (the stream held nothing then) bounds nothing: every epoch
    the stream has since began after it. A claim in another epoch than the baseline's
    stands: it is either the one the stream went on in (all of it came after) or one the
    store no longer holds, which the replay then reports as not recovered. Without a
    claim the baseline is the start; without either, there is none."""
    if claimed is None or baseline is None:
        return claimed or baseline
    if claimed[1] == baseline[1] and claimed[0] < baseline[0]:
        return baseline
    return claimed
