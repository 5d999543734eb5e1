"""Reading a stream's history a page at a time: a resume's replay and a node's gap fill.

One unbounded read of a long history held Redis for every replica for seconds and, past
op_timeout, failed although Redis held all of it. Each page is a read of its own, bounded in
entries and bytes and by its own op_timeout, and its reader hands it on before the next one
is read, so a node holds one page of a stream at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final

from stabilizer.backends.base import History
from stabilizer.errors import BackendUnavailable, WireError
from stabilizer.node.context import NodeContext
from stabilizer.pure.wire import Envelope, decode

logger = logging.getLogger(__name__)

#: the entries of a stream one read of its history asks for at most (one page)
HISTORY_PAGE: Final = 500
#: and the bytes of them (but for the first): a page's share of Redis's time and of memory
HISTORY_PAGE_BYTES: Final = 1 << 20

#: what a page reads as when it does not give the stream back from where the last one ended
UNRECOVERED: Final = History([], False)


def stored_envelope(raw: bytes) -> Envelope | None:
    """Decode a history entry; None (logged) when the store holds something foreign."""
    try:
        envelope = decode(raw)
    except WireError:
        logger.warning("undecodable history entry skipped")
        return None
    if envelope.offset is None or envelope.epoch is None or envelope.payload is None:
        return None
    return envelope


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a stream's history: the store's answer and the envelopes it gave back
    (foreign entries left out)."""

    found: History
    envelopes: list[Envelope]


async def history_pages(ctx: NodeContext, stream: str, after: int, epoch: str, *,
                        through: int | None = None) -> AsyncGenerator[Page, None]:
    """Read `stream` after offset `after` of `epoch`, a page at a time, up to offset
    `through` (None: the stream's last offset as the first page found it; what comes after
    reaches the reader live). Close it with `contextlib.aclosing` when stopping early.

    The first page comes as the store answered (in another epoch, absent or not covered,
    for the reader to judge; no answer reads as not covered), and is the last unless it
    gave the stream back. Every later page holds envelopes that follow the last page's;
    one that would not (the stream trimmed past where the last page ended, gone, in
    another epoch, or not answering) comes as UNRECOVERED and ends the reading: a stream
    given back in part, never a gap skipped."""
    end = through
    first = True
    while first or (end is not None and after < end):
        most = HISTORY_PAGE if end is None else max(min(HISTORY_PAGE, end - after), 1)
        try:
            found = await ctx.ask(ctx.backend.history.read(
                stream, after, epoch, max_entries=most, max_bytes=HISTORY_PAGE_BYTES))
        except BackendUnavailable:
            found = UNRECOVERED
        whole = found.covered and not found.absent
        if not first and (not whole or not found.envelopes):
            yield Page(UNRECOVERED, [])
            return
        envelopes = [envelope for raw in found.envelopes
                     if (envelope := stored_envelope(raw)) is not None]
        yield Page(found, envelopes)
        if not whole:
            return
        first = False
        end = found.last if end is None else min(end, found.last)
        after += len(found.envelopes)  # (a stream's offsets follow each other)
        if envelopes:
            assert envelopes[-1].epoch is not None
            epoch = envelopes[-1].epoch  # (what a read from the start asks for next)
