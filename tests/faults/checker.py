"""The invariants, judged from what the clients saw and what the cluster says once quiet.

Pure functions over a History and Snapshots; each returns a list of violations, one line
each, naming the client, socket, replica or stream concerned.

- sockets: at most one open socket per client id, the one presence names; each replica's
  pool, presence, the per-node sets and the cluster counts all agree with the open sockets;
- groups: the members Redis and every replica report are the clients whose open socket got
  the group's marker (with history, plus clients whose session is suspended);
- messages (streams.py): with history, every socket got its streams exactly once and in
  order, or was told ``recovered: false``; without, no duplicates and per-sender order;
- leaks: no Connection object, task or subscription outlives its socket; once every client
  left, nothing is left at all; no error or unexpected traceback in any replica's log.
"""

from __future__ import annotations

import re
from collections import Counter

from tests.faults.history import History, SocketRecord
from tests.faults.schedule import GROUPS
from tests.faults.streams import check_messages
from tests.faults.views import ReplicaView, Snapshot

__all__ = ["check_drained", "check_final", "check_logs", "check_messages", "kind_of",
           "open_by_client"]

_KINDS = (  # (kind, words one of which the violation's text holds), first match wins
    ("split brain", ("split brain",)),
    ("leftovers", ("after every client left",)),
    ("logs", (" logged: ",)),
    ("leaks", ("keeps Connection", "socket handlers", "still runs task")),
    ("healing", ("never received the final", "did not answer", "backend unavailable",
                 "could not be read")),
    ("messages", ("received message", "went back", "skipped offsets", "epoch", "sequenced twice",
                  "carried two messages", " missed ", " after (")),
    ("groups", ("group ", "members of", "its group set")),
    ("presence", ("presence", "per-node set", "cluster counts", "sees nodes", "holds {")),
)


def kind_of(violation: str) -> str:
    """Which invariant a violation breaks, for the campaign's summary."""
    for kind, words in _KINDS:
        if any(word in violation for word in words):
            return kind
    return "other"


def open_by_client(history: History) -> dict[str, list[SocketRecord]]:
    """Open sockets (client side) by client id."""
    found: dict[str, list[SocketRecord]] = {}
    for record in history.open_sockets():
        found.setdefault(record.client, []).append(record)
    return found


def _describe(record: SocketRecord) -> str:
    return f"sid {record.sid} on {record.node_id} (conn {record.conn_id})"


def check_final(history: History, snap: Snapshot, markers: dict[str, int]) -> list[str]:
    """Every invariant of the quiet cluster; `markers` maps "all", each group and each
    client id to the message number of its marker."""
    problems = check_sockets(history, snap)
    problems += check_replicas(history, snap)
    problems += check_groups(history, snap, markers)
    problems += check_messages(history, markers)
    return problems


def check_sockets(history: History, snap: Snapshot) -> list[str]:
    """One open socket per client id, named by presence; per-node sets and counts agree."""
    problems = []
    if snap.redis.error:
        return [f"Redis could not be read after the run: {snap.redis.error}"]
    opened = open_by_client(history)
    presence = snap.redis.presence
    for client, records in sorted(opened.items()):
        if len(records) > 1:
            problems.append(f"split brain: client {client} has {len(records)} open sockets: "
                            + ", ".join(_describe(r) for r in records)
                            + f"; presence names {presence.get(client)}")
        named = presence.get(client)
        if named is None:
            problems.append(f"client {client}: open socket {_describe(records[-1])} but no "
                            "presence")
        elif not any((r.node_id, r.conn_id) == named for r in records):
            problems.append(f"client {client}: presence names {named}, its open socket is "
                            + ", ".join(_describe(r) for r in records))
    for client, named in sorted(presence.items()):
        if client not in opened:
            problems.append(f"client {client}: presence names {named} but no socket is open")
    for node, members in sorted(snap.redis.node_sets.items()):
        expected = {c for c, (owner, _) in presence.items() if owner == node}
        if members != expected:
            problems.append(f"per-node set of {node} is {sorted(members)}, presence puts "
                            f"{sorted(expected)} there")
    counts = {view.node_id: view.cluster["count"] for view in snap.replicas if view.cluster}
    if len(set(counts.values())) > 1 or any(n != len(presence) for n in counts.values()):
        problems.append(f"cluster counts disagree: {counts}, presence has {len(presence)}, "
                        f"{sum(len(r) for r in opened.values())} sockets are open")
    return problems


def check_replicas(history: History, snap: Snapshot) -> list[str]:
    """Each replica: answers, sees presence as Redis has it, holds exactly the sockets open
    on it, and keeps no Connection object, handler or task of a departed socket."""
    problems = []
    departed = {r.conn_id for r in history.sockets if r.conn_id and not r.is_open}
    all_nodes = sorted(view.node_id for view in snap.replicas)
    for view in snap.replicas:
        if not view.answered:
            problems.append(f"{view.node_id} did not answer: {view.errors}")
            continue
        assert view.cluster is not None
        assert view.local is not None
        seen = {c: tuple(where) for c, where in view.cluster["clients"].items()}
        if seen != snap.redis.presence:
            problems.append(f"{view.node_id} sees presence {seen}, Redis has "
                            f"{snap.redis.presence}")
        if view.cluster["nodes"] != all_nodes:
            problems.append(f"{view.node_id} sees nodes {view.cluster['nodes']}")
        if not view.local.get("backend_available", True):
            problems.append(f"{view.node_id} still reports its backend unavailable")
        problems += _local_state(history, view, departed)
    return problems


def _local_state(history: History, view: ReplicaView, departed: set[str]) -> list[str]:
    assert view.local is not None
    problems = []
    expected = {r.client: r.conn_id for r in history.open_sockets() if r.node_id == view.node_id}
    pool = view.local["pool"]
    if pool != expected:
        problems.append(f"{view.node_id} holds {pool}, the clients hold {expected} open there")
    alive = Counter(obj["conn_id"] for obj in view.local["connections"])
    for conn_id, count in sorted(alive.items()):
        if conn_id not in pool.values() or count > 1:
            owner = next(o for o in view.local["connections"] if o["conn_id"] == conn_id)
            problems.append(f"{view.node_id} keeps Connection {conn_id} of "
                            f"{owner['client_id']} alive ({owner['state']}) after its socket "
                            f"ended; held by {owner.get('held_by')}")
    if view.local["socket_handlers"] != len(pool):
        problems.append(f"{view.node_id} runs {view.local['socket_handlers']} socket handlers "
                        f"for {len(pool)} connections")
    for name in view.local["task_names"]:
        if any(conn_id in name for conn_id in departed):
            problems.append(f"{view.node_id} still runs task {name!r} of a departed socket")
    return problems


def stray_members(history: History, snap: Snapshot, group: str) -> set[str]:
    """Members of `group` in Redis with no open socket (with history: and no suspended
    session either)."""
    redis = snap.redis
    return (redis.groups.get(group, set()) - set(open_by_client(history))
            - (redis.away if history.history else set()))


def check_groups(history: History, snap: Snapshot, markers: dict[str, int]) -> list[str]:
    """Group members (Redis and every replica) are the clients whose open socket follows
    the group (it received the group's marker), plus, with history, suspended sessions;
    each replica with local members subscribes to the group's channel once."""
    problems = []
    opened = open_by_client(history)
    redis = snap.redis
    for group in GROUPS:
        members = redis.groups.get(group, set())
        marker = markers.get(group)
        following = {r.client for rs in opened.values() for r in rs
                     if marker is not None and _got(r, marker)}
        listed_open = members & set(opened)
        sent = history.messages.get((marker, 0)) if marker is not None else None
        if sent is not None and not sent.definite:  # (sent again: runner.MARKER_TRIES)
            problems.append(f"group {group}: its final message {marker} was never accepted "
                            f"after the cluster healed (status {sent.status})")
        elif following != listed_open:
            problems.append(f"group {group}: members with an open socket {sorted(listed_open)}"
                            f", but the sockets that receive it belong to {sorted(following)}")
        stray = stray_members(history, snap, group)
        if stray:
            problems.append(f"group {group}: members {sorted(stray)} have no open socket"
                            + (" and no suspended session" if history.history else ""))
        listed = redis.group_presence.get(group, set())
        if listed - members:  # (a join without metadata lists no entry: a subset)
            problems.append(f"group {group}: its presence lists {sorted(listed - members)}, "
                            f"which are not members")
        if bool(listed) != (group in redis.presence_versions):
            problems.append(f"group {group}: presence version key "
                            f"{'present' if group in redis.presence_versions else 'missing'}"
                            f" with {len(listed)} entries")
        for view in snap.replicas:
            if view.groups is not None and set(view.groups.get(group, [])) != members:
                problems.append(f"{view.node_id} reports members of {group} as "
                                f"{view.groups.get(group)}, Redis has {sorted(members)}")
        homes = {r.node_id for rs in opened.values() for r in rs if r.client in following}
        subscribed = redis.subscribers.get(f"gc:{group}", 0)
        if subscribed != len(homes):
            problems.append(f"group {group}: {subscribed} subscriptions to its channel, "
                            f"{len(homes)} replicas have members ({sorted(homes)})")
    for client, groups in sorted(redis.client_groups.items()):
        listed = {g for g in GROUPS if client in redis.groups.get(g, set())}
        if groups != listed:
            problems.append(f"client {client}: its group set is {sorted(groups)}, the group "
                            f"sets list it in {sorted(listed)}")
    for channel in ["all", *(f"n:{view.node_id}" for view in snap.replicas)]:
        expected = len(snap.replicas) if channel == "all" else 1
        if redis.subscribers.get(channel, 0) != expected:
            problems.append(f"channel {channel} has {redis.subscribers.get(channel)} "
                            f"subscribers, expected {expected}")
    return problems


def _got(record: SocketRecord, number: int) -> bool:
    return any(frame.key == (number, 0) for frame in record.frames)


def check_drained(history: History, snap: Snapshot) -> list[str]:
    """Once every client closed its socket (and sessions expired): nothing is left."""
    problems = []
    redis = snap.redis
    if redis.error:
        return [f"Redis could not be read after the clients left: {redis.error}"]
    leftovers = {"presence": sorted(redis.presence), "away sessions": sorted(redis.away),
                 **{f"per-node set {n}": sorted(s) for n, s in redis.node_sets.items()},
                 **{f"group {g}": sorted(m) for g, m in redis.groups.items()},
                 **{f"groups of {c}": sorted(g) for c, g in redis.client_groups.items()},
                 **{f"presence of group {g}": sorted(m)
                    for g, m in redis.group_presence.items()},
                 **{f"presence version of group {g}": [g] for g in redis.presence_versions},
                 **{f"subscribers of gc:{g}": redis.subscribers.get(f"gc:{g}", 0)
                    for g in GROUPS}}
    for what, left in leftovers.items():
        if left:
            problems.append(f"after every client left, {what} still holds {left}")
    conn_ids = {r.conn_id for r in history.sockets if r.conn_id}
    for view in snap.replicas:
        if view.local is None:
            problems.append(f"{view.node_id} did not answer after every client left")
            continue
        local = view.local
        if local["pool"] or local["connections"] or local["socket_handlers"]:
            problems.append(f"after every client left, {view.node_id} holds pool "
                            f"{local['pool']}, {len(local['connections'])} Connection "
                            f"objects, {local['socket_handlers']} socket handlers")
        stale = [n for n in local["task_names"] if any(c in n for c in conn_ids)]
        if stale:
            problems.append(f"after every client left, {view.node_id} runs tasks {stale}")
    return problems


_RECORD = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ "
                     r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) |"
                     r"(?P<uvicorn>DEBUG|INFO|WARNING|ERROR|CRITICAL):\s)")


def check_logs(logs: list[tuple[str, str]]) -> list[str]:
    """No ERROR or CRITICAL record, and no traceback outside a WARNING record (the library
    reports a fault it recovered from as a warning with its exception) in any log."""
    problems = []
    for label, text in logs:
        level, lines = "", []
        for line in [*text.splitlines(), "0000-00-00 00:00:00,000 end INFO end"]:
            match = _RECORD.match(line)
            if match is None:
                lines.append(line)
                continue
            problems += _judge(label, level, lines)
            level, lines = match.group("level") or match.group("uvicorn"), [line]
    return problems


def _judge(label: str, level: str, lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    if level in ("ERROR", "CRITICAL") or ("Traceback" in text and level != "WARNING"):
        if len(text) > 1500:  # a traceback's last lines name the error: keep those
            text = text[:300] + "\n  [...]\n" + text[-1200:]
        return [f"{label} logged: " + text]
    return []
