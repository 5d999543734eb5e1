"""What a server promotes into Python's oldest generation, by type (a diagnostic for the
reconnect storm, ``python -m bench.storm --census``).

The cyclic collector runs a full collection once the objects promoted into the oldest
generation since the last one outnumber a quarter of those already there, and each full
collection walks every object in it. So the collector's share of a connect follows how
many objects each connect promotes: what a connection keeps for its life, and what is
still alive, waiting for a round trip, when a generation-1 collection comes.

``Promotions`` is a ``gc.callbacks`` entry: at the start of every collection of generation
1 or 2, the objects of generations 0 and 1 (all moved to the oldest generation, but for
the cyclic garbage among them) are counted by type. Counting walks them, so a server with
the census on spends far more CPU in the collector's callbacks: its CPU figures are not
comparable, only its counts are. ``bench.replicas --census`` serves the counts at
``GET /bench/promoted``.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI


class Promotions:
    """Objects promoted into the oldest generation, by type name, since the start."""

    def __init__(self) -> None:
        self.collections = 0
        self.types: Counter[str] = Counter()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "start" or info["generation"] < 1:
            return
        self.collections += 1
        self.types.update(type(o).__qualname__ for o in gc.get_objects(0))
        self.types.update(type(o).__qualname__ for o in gc.get_objects(1))


def install(app: FastAPI) -> None:
    """Count promotions from now on, and serve the counts at ``GET /bench/promoted``."""
    promotions = Promotions()
    gc.callbacks.append(promotions)

    @app.get("/bench/promoted")
    async def bench_promoted() -> dict[str, Any]:
        return {"collections": promotions.collections, "types": dict(promotions.types)}


def per_connect(before: Mapping[str, Any], after: Mapping[str, Any],
                connects: int) -> dict[str, float]:
    """Promotions per connect by type between two ``/bench/promoted`` readings."""
    old = before["types"]
    return {name: (count - old.get(name, 0)) / connects
            for name, count in after["types"].items() if count != old.get(name, 0)}


def largest_differences(by_kind: Mapping[str, Mapping[str, float]], base: str,
                        top: int = 15) -> list[tuple[str, list[float]]]:
    """The `top` types whose promotions per connect differ most from `base`'s, each with
    its figure for every kind (in the mapping's order)."""
    kinds: Sequence[str] = list(by_kind)
    names = {name for counts in by_kind.values() for name in counts}
    rows = [(name, [by_kind[k].get(name, 0.0) for k in kinds]) for name in names]
    base_index = kinds.index(base)
    rows.sort(key=lambda row: (-max(abs(v - row[1][base_index]) for v in row[1]), row[0]))
    return rows[:top]
