"""What the cluster looked like at one moment: each replica's answers and Redis's keys.

Plain records (no I/O): the cluster module fills them, the checker compares them with what
the clients saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReplicaView:
    """One replica's answers (None where it did not answer)."""

    index: int
    node_id: str
    running: bool
    cluster: dict[str, Any] | None = None  # /faults/cluster
    local: dict[str, Any] | None = None  # /faults/local
    groups: dict[str, list[str]] | None = None  # /faults/groups
    errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        """Every endpoint answered."""
        return None not in (self.cluster, self.local, self.groups)


@dataclass
class RedisView:
    """The keys the invariants are about, read from Redis itself (not through a replica)."""

    presence: dict[str, tuple[str, str]] = field(default_factory=dict)  # cid -> (node, conn)
    node_sets: dict[str, set[str]] = field(default_factory=dict)  # node -> cids
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> members
    client_groups: dict[str, set[str]] = field(default_factory=dict)  # cid -> groups
    group_presence: dict[str, set[str]] = field(default_factory=dict)  # group -> cids listed
    presence_versions: set[str] = field(default_factory=set)  # groups with a version key
    away: set[str] = field(default_factory=set)  # clients with a suspended session
    subscribers: dict[str, int] = field(default_factory=dict)  # channel suffix -> count
    nodes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Snapshot:
    """The replicas and Redis at one moment."""

    replicas: list[ReplicaView]
    redis: RedisView

    def signature(self) -> Any:
        """What must stop changing before the cluster counts as quiet."""
        return (
            [(view.cluster and {**view.cluster}, view.local and view.local.get("pool"),
              view.groups, view.local and view.local.get("backend_available"))
             for view in self.replicas],
            self.redis.presence, self.redis.groups, self.redis.subscribers,
        )
