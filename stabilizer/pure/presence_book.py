"""What a node knows of its own connections' presence entries, per group (pure): enough to
give them back to a store that lost them (it restarted empty, or reaped the node).

Two sources feed it. The changes the store publishes (PRESENCE envelopes, in the store's
order with growing versions) reach the node for every group it follows, which is every
group with a local member: the newest version wins, whichever node wrote it. What the node
itself writes (a join with metadata, an update) or reads (the entry of a member whose
change went out before the node followed its group) counts too: it is taken only if no
change of that member's entry was heard while the write or read was in flight (the node
follows the group by then, so anything heard meanwhile is as new or newer), which also
covers a change that never arrived (the subscription was down).

An entry goes only when the node ends the membership here (ended()): a published removal
alone keeps it, since the store removes a local member's entry without the node only when
it took the node for dead (it reaped it, and ended its clients' memberships), which is when
the node gives the memberships back, with their entries. An ended membership keeps its
version, so a late change from before the end cannot bring the entry back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(slots=True)
class _Slot:
    entry: str | None = None  # the stored entry text (None: none)
    version: int = 0  # of the last change heard (0: none)
    heard: int = 0  # changes heard: a write in flight compares it


class PresenceBook(Generic[K]):
    """Per key (a local connection) and group, the member's current presence entry."""

    def __init__(self) -> None:
        self._slots: dict[K, dict[str, _Slot]] = {}

    def _slot(self, key: K, group: str) -> _Slot:
        return self._slots.setdefault(key, {}).setdefault(group, _Slot())

    def heard(self, key: K, group: str, version: int, entry: str | None) -> None:
        """The store published a change of the member's entry (None: removed, which
        leaves the entry the membership had until ended())."""
        slot = self._slot(key, group)
        slot.heard += 1
        if version > slot.version:
            slot.version = version
            if entry is not None:
                slot.entry = entry

    def begin(self, key: K, group: str) -> int:
        """A write or read of the member's entry starts: return the mark for learned()."""
        return self._slot(key, group).heard

    def learned(self, key: K, group: str, entry: str | None, mark: int) -> None:
        """The write or read begun at `mark` found `entry` stored (None: none); kept
        unless a change was heard since."""
        slot = self._slot(key, group)
        if slot.heard == mark:
            slot.entry = entry

    def ended(self, key: K, group: str) -> None:
        """The membership ended: no entry (the version stays, against late changes)."""
        groups = self._slots.get(key)
        slot = None if groups is None else groups.get(group)
        if slot is not None:
            slot.entry = None

    def entries(self, key: K) -> dict[str, str]:
        """The member's entries by group."""
        return {group: slot.entry for group, slot in self._slots.get(key, {}).items()
                if slot.entry is not None}

    def forget(self, key: K) -> None:
        """The connection is gone."""
        self._slots.pop(key, None)
