"""Presence with state (pure): the metadata of a group's members, the changes the backend
publishes, their coalescing into Phoenix-like diffs, and a client's copy of the state.

A member's **entry** is stored per group and client id as the compact JSON text
``{"c": client_id, "u": user_id or null, "m": meta}``. A **change** is the JSON array
``[old entry or null, new entry or null]`` the backend publishes (a PRESENCE envelope) with
a version that grows in the backend's order; one envelope may carry a batch of a group's
changes that one backend step made (a sweep ending many sessions), so they go out in one
diff. A **presence** (what get_presence returns and the ``presence_state`` frame carries)
maps a key (the user id of the member's connection, else its client id) to a list of
``{"client_id": ..., "meta": {...}}``, one per connection.
A **diff** is ``{"joins": presence, "leaves": presence}``; an update is a leave of the old
entry and a join of the new one, as in Phoenix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from stabilizer.pure.json_input import loads, nesting_within

#: The largest presence metadata, as compact UTF-8 JSON.
MAX_META_BYTES: Final = 1024
#: How deep metadata may nest (a stored entry holds it one level down).
MAX_META_DEPTH: Final = 32
_ENTRY_DEPTH: Final = MAX_META_DEPTH + 1

#: key -> one item per connection: {"client_id": str, "meta": dict}
PresenceMap: TypeAlias = dict[str, list[dict[str, Any]]]


def encode_meta(meta: object) -> str:
    """Return `meta` as compact JSON text.

    Raises:
        ValueError: not a dict, not JSON-serialisable, over MAX_META_BYTES encoded,
            nested deeper than MAX_META_DEPTH, or holding text UTF-8 cannot encode.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"presence metadata must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"presence metadata must be JSON-serialisable: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError("presence metadata holds a lone surrogate") from exc
    if size > MAX_META_BYTES:
        raise ValueError(f"presence metadata is {size} bytes as JSON; the limit is "
                         f"{MAX_META_BYTES}")
    if not nesting_within(text, MAX_META_DEPTH):
        raise ValueError(f"presence metadata nests deeper than {MAX_META_DEPTH} levels")
    return text


def entry_text(client_id: str, user_id: str | None, meta_json: str) -> str:
    """The stored entry of one member (`meta_json` from encode_meta)."""
    head = json.dumps({"c": client_id, "u": user_id}, separators=(",", ":"))
    return f'{head[:-1]},"m":{meta_json}}}'


@dataclass(frozen=True, slots=True)
class Entry:
    """One member's presence: its client id, its user id (None: none) and metadata."""

    client_id: str
    user_id: str | None
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        """What the member is listed under: its user id, else its client id."""
        return self.user_id if self.user_id is not None else self.client_id

    def item(self) -> dict[str, Any]:
        """The entry as a presence lists it."""
        return {"client_id": self.client_id, "meta": self.meta}

    def text(self) -> str:
        """The entry as it is stored (entry_text)."""
        meta_json = json.dumps(self.meta, separators=(",", ":"), ensure_ascii=False)
        return entry_text(self.client_id, self.user_id, meta_json)


def parse_entry(raw: object) -> Entry | None:
    """Parse a stored entry (text or an already decoded object); None if malformed."""
    try:
        body = loads(raw, _ENTRY_DEPTH) if isinstance(raw, str | bytes) else raw
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    client_id, user_id, meta = body.get("c"), body.get("u"), body.get("m")
    if (not isinstance(client_id, str) or not isinstance(meta, dict)
            or not (user_id is None or isinstance(user_id, str))):
        return None
    return Entry(client_id, user_id, meta)


def presence_of(entries: Iterable[Entry]) -> PresenceMap:
    """Group entries by key, each key's items ordered by client id."""
    out: PresenceMap = {}
    for entry in sorted(entries, key=lambda e: (e.key, e.client_id)):
        out.setdefault(entry.key, []).append(entry.item())
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """One presence change of a group, as the backend published it: `version` grows in
    the backend's order."""

    version: int
    client_id: str
    old: Entry | None
    new: Entry | None


def _decoded(payload: object, version: object) -> tuple[object, int | None]:
    """A PRESENCE envelope's payload as JSON and its version (None where malformed)."""
    try:
        number = int(version) if isinstance(version, str) else None
        body = loads(payload, _ENTRY_DEPTH + 1) if isinstance(payload, str | bytes) else None
    except ValueError:
        return None, None
    return body, number


def _change(version: int, old_raw: object, new_raw: object) -> Change | None:
    old = None if old_raw is None else parse_entry(old_raw)
    new = None if new_raw is None else parse_entry(new_raw)
    if (old_raw is not None and old is None) or (new_raw is not None and new is None):
        return None
    either = new or old
    if either is None:
        return None
    return Change(version, either.client_id, old, new)


def parse_change(payload: object, version: object) -> Change | None:
    """Parse a PRESENCE envelope of one change (``[old, new]``) and its version (the
    envelope's ref); None if malformed."""
    body, number = _decoded(payload, version)
    if number is None or not isinstance(body, list) or len(body) != 2:
        return None
    return _change(number, body[0], body[1])


def parse_changes(payload: object, version: object) -> list[Change] | None:
    """Parse a PRESENCE envelope: one change, or a batch of the changes one backend step
    made to the group (``[[version, old, new], ...]``, versions growing, the ref the last
    one's); None if malformed."""
    body, number = _decoded(payload, version)
    if number is None or not isinstance(body, list) or not body:
        return None
    if not isinstance(body[0], list):
        one = _change(number, body[0], body[1]) if len(body) == 2 else None
        return None if one is None else [one]
    changes: list[Change] = []
    for item in body:
        if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int):
            return None
        change = _change(item[0], item[1], item[2])
        if change is None or (changes and change.version <= changes[-1].version):
            return None
        changes.append(change)
    return changes if changes[-1].version == number else None


def coalesce(changes: Sequence[Change]) -> dict[str, PresenceMap] | None:
    """One diff for a window of changes (in version order): per client, what it was before
    the first change and what it is after the last; a client that ends as it began (a join
    then a leave) is left out. None when nothing is left."""
    before: dict[str, Entry | None] = {}
    after: dict[str, Entry | None] = {}
    for change in changes:
        before.setdefault(change.client_id, change.old)
        after[change.client_id] = change.new
    joins: list[Entry] = []
    leaves: list[Entry] = []
    for client_id, first in before.items():
        last = after[client_id]
        if first == last:
            continue
        if first is not None:
            leaves.append(first)
        if last is not None:
            joins.append(last)
    if not joins and not leaves:
        return None
    return {"joins": presence_of(joins), "leaves": presence_of(leaves)}


class PresenceSync:
    """A client's copy of a group's presence, kept by the ``presence_state`` and
    ``presence_diff`` frames (Phoenix's syncState and syncDiff)."""

    def __init__(self) -> None:
        self._state: dict[str, dict[str, dict[str, Any]]] = {}  # key -> client id -> item

    def sync_state(self, state: Mapping[str, Any]) -> dict[str, PresenceMap]:
        """Take a whole presence; return what changed from the copy as a diff."""
        old = self.list()
        self._state = {}
        self._add(state)
        new = self.list()
        joins = {key: [item for item in items if item not in old.get(key, [])]
                 for key, items in new.items()}
        leaves = {key: [item for item in items if item not in new.get(key, [])]
                  for key, items in old.items()}
        return {"joins": {k: v for k, v in joins.items() if v},
                "leaves": {k: v for k, v in leaves.items() if v}}

    def sync_diff(self, diff: Mapping[str, Any]) -> dict[str, PresenceMap]:
        """Apply a diff (leaves first, then joins: an update is both)."""
        leaves, joins = diff.get("leaves") or {}, diff.get("joins") or {}
        if isinstance(leaves, Mapping):
            for key, items in leaves.items():
                held = self._state.get(key, {})
                for item in _items(items):
                    held.pop(item["client_id"], None)
                if not held:
                    self._state.pop(key, None)
        self._add(joins)
        return {"joins": dict(joins) if isinstance(joins, Mapping) else {},
                "leaves": dict(leaves) if isinstance(leaves, Mapping) else {}}

    def _add(self, presence: object) -> None:
        if not isinstance(presence, Mapping):
            return
        for key, items in presence.items():
            for item in _items(items):
                self._state.setdefault(str(key), {})[item["client_id"]] = item

    def list(self) -> PresenceMap:
        """The presence as the copy holds it now."""
        return {key: [held[c] for c in sorted(held)] for key, held in sorted(self._state.items())}

    def count(self) -> int:
        """How many connections the copy lists."""
        return sum(len(held) for held in self._state.values())


def _items(items: object) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    return [item for item in items
            if isinstance(item, dict) and isinstance(item.get("client_id"), str)]
