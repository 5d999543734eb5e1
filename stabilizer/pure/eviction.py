"""The order in which a node over max_total_memory evicts its connections (pure).

The eviction policy (lru, fifo) ranks the connections; what each one holds decides which of
them may go yet. A connection whose eviction would free less than 1/SIGNIFICANT_SHARE of
the largest holding still left is passed over while that holder remains. In a broadcast
storm one stalled reader can hold nearly every byte of the node in its outbox: closing the
healthy clients ranked before it would free a few hundred bytes each and still leave the
node over its limit. Where the holdings are alike (a node over its limit by its number of
connections) every connection is eligible and the policy's order is kept as it is.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

#: A connection is eligible once its eviction frees at least 1/SIGNIFICANT_SHARE of what
#: the largest remaining holder's would.
SIGNIFICANT_SHARE: Final = 16

T = TypeVar("T")


def eviction_order(holdings: Sequence[tuple[T, int]]) -> Iterator[T]:
    """Yield candidates in the order they are evicted, lazily (the caller stops once it has
    freed enough). `holdings` pairs each candidate with the bytes its eviction frees and
    comes in the policy's order: the first eligible one in that order goes next."""
    largest = [(-size, rank) for rank, (_, size) in enumerate(holdings)]
    heapq.heapify(largest)  # every candidate left, largest holding on top
    waiting = list(largest)  # not eligible yet, largest holding on top (a heap already)
    eligible: list[int] = []  # ranks in the policy's order, first on top
    gone: set[int] = set()
    while eligible or waiting:
        while largest[0][1] in gone:
            heapq.heappop(largest)
        bar = -largest[0][0]
        # the largest holder left is on top of `waiting` when `eligible` is empty
        while waiting and -waiting[0][0] * SIGNIFICANT_SHARE >= bar:
            heapq.heappush(eligible, heapq.heappop(waiting)[1])
        rank = heapq.heappop(eligible)
        gone.add(rank)
        yield holdings[rank][0]
