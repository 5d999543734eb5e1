"""Memory estimates (pure): roughly what a JSON-like value holds, bounded in depth."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

_PLAIN_MAPPINGS: Final = (dict, MappingProxyType)


def estimate_size(value: object, depth: int = 0) -> int:
    """Approximate the bytes a JSON-like value holds (bounded walk, like the seed's getsizeof)."""
    if type(value) in _PLAIN_MAPPINGS and not value:  # no metadata (every connect asks)
        return 64
    if isinstance(value, str):
        return 49 + len(value)
    if isinstance(value, bytes | bytearray):
        return 33 + len(value)
    if isinstance(value, bool | int | float) or value is None:
        return 28
    if depth > 8:
        return 64
    if isinstance(value, Mapping):
        return 64 + sum(
            estimate_size(k, depth + 1) + estimate_size(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return 56 + sum(estimate_size(item, depth + 1) for item in value)
    return 64
