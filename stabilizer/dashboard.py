"""The dashboard's data: what every node reported, the cluster's counts, client search.

Nothing here does Redis work per message. A poll costs a few reads of what the nodes keep
anyway: the liveness registry, the report each node writes with its keepalive (every
``node_ttl / 3``), the presence count, and the member counts of the groups shown (one
batched read); this node's own row is taken fresh. Rates are left to the page, from the
counters of successive reports.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Final

from stabilizer.backends.base import NodeReport, Presence
from stabilizer.errors import BackendUnavailable
from stabilizer.manager import WebSocketConnectionManager

#: Groups the dashboard lists: the largest of those the nodes' reports name (each names
#: its own largest), counted on every node.
MAX_GROUPS: Final = 100
#: Connections a search lists when the query is a user id.
MAX_MATCHES: Final = 50


async def snapshot(manager: WebSocketConnectionManager) -> dict[str, Any]:
    """The cluster as the dashboard shows it: nodes, their counters, groups, totals."""
    now = time.time()
    here = await manager.survey_node_report()  # (the loop runs between its slices)
    reports: dict[str, NodeReport] = {}
    live: set[str] = {here.node_id}
    cluster_connections: int | None = here.connections
    available = True
    try:
        live.update(await manager.get_nodes())
        reports.update((r.node_id, r) for r in await manager.get_node_reports())
        if manager.backend.is_shared:
            cluster_connections = await manager.get_cluster_connection_count()
    except BackendUnavailable:
        available, cluster_connections = False, None
    reports[here.node_id] = here
    late_after = manager.config.node_ttl * 2 / 3  # two keepalives missed
    nodes = []
    for node_id in sorted(live | set(reports)):
        report = reports.get(node_id)
        if report is None:
            nodes.append({"node_id": node_id, "state": "no report", "self": False})
            continue
        state = report.phase
        if node_id not in live:
            state = "expired"  # its deadline passed: a survivor reaps it at its keepalive
        elif now - report.at > late_after:
            state = "late"
        nodes.append({**_row(report), "state": state, "self": node_id == here.node_id,
                      "age": max(0.0, now - report.at)})
    groups, counted = await _groups(
        manager, [reports[node_id] for node_id in live if node_id in reports], available)
    return {
        "node_id": here.node_id, "time": now, "node_ttl": manager.config.node_ttl,
        "backend": manager.backend.name, "backend_available": available,
        "shared": manager.backend.is_shared, "cluster_connections": cluster_connections,
        "nodes": nodes, "groups": groups, "groups_counted": counted,
    }


async def _groups(manager: WebSocketConnectionManager, reports: list[NodeReport],
                  available: bool) -> tuple[list[dict[str, Any]], str]:
    """The largest groups the live nodes' reports name, and how they were counted.

    A report names a node's largest groups only, so its counts summed over nodes miss the
    members of a group on the nodes where it is small. The groups the reports suggest are
    counted again in the shared store, in one read ("cluster": members on every node, a
    resumable session's client included, as get_group_members lists them); when it cannot
    be read, the reported counts are summed and said to be ("reported")."""
    reported: Counter[str] = Counter()
    for report in reports:
        reported.update(report.groups)
    largest = reported.most_common(MAX_GROUPS)
    counted = "reported"
    if available and largest:
        try:
            exact = await manager.count_group_members([name for name, _ in largest])
        except (BackendUnavailable, ValueError):  # (a name no node could have joined)
            pass
        else:
            largest = sorted(((name, count) for name, count in exact.items() if count),
                             key=lambda item: (-item[1], item[0]))
            counted = "cluster"
    elif available:
        counted = "cluster"  # (nothing to count)
    return [{"group": name, "members": count} for name, count in largest], counted


def _row(report: NodeReport) -> dict[str, Any]:
    return {"node_id": report.node_id, "at": report.at, "connections": report.connections,
            "messages_in": report.messages_in, "messages_out": report.messages_out,
            "broadcasts": report.broadcasts, "outbox_frames": report.outbox_frames,
            "outbox_max_frames": report.outbox_max_frames,
            "backend_latency_ms": report.backend_latency_ms}


async def search(manager: WebSocketConnectionManager, query: str) -> dict[str, Any]:
    """Where `query` is connected, as a client id and as a user id (its connections).

    Raises:
        BackendUnavailable: the shared store cannot be reached.
    """
    matches: dict[str, Presence] = {}
    found = await manager.find_client(query)
    if found is not None:
        matches[found.client_id] = found
    for presence in (await manager.get_user_connections(query))[:MAX_MATCHES]:
        matches.setdefault(presence.client_id, presence)
    return {"query": query, "matches": [
        {"client_id": p.client_id, "node_id": p.node_id, "since": p.since,
         "user_id": p.user_id} for p in matches.values()]}
