"""Message invariants, per socket, from the frames it received.

With history every message of a stream carries (epoch, offset), offsets rising by one. A
socket must see its streams without a gap, a repeat or a step back, from the positions it
resumed with (or from its first message), unless the server said ``recovered: false`` for
the stream first. A group stream may jump where the client left and joined the group again.
An epoch change is a loss unless the socket had seen the old epoch to its end and starts the
new one at offset 1. A fresh socket must get every broadcast and direct message sent after
its welcome. Without history: no message twice on one socket, and the messages one replica
sent to one target (that it reported handed on) arrive in the order it sent them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tests.faults.history import History, MessageKey, MessageRecord, Received, SocketRecord

Slot = tuple[str, str, int]  # (stream, epoch, offset)


@dataclass
class _Seen:
    """Where every message landed in its stream, as the sockets report it."""

    at: dict[Slot, MessageKey]
    where: dict[MessageKey, Slot]
    highest: dict[tuple[str, str], int]
    problems: list[str]


def check_messages(history: History, markers: dict[str, int]) -> list[str]:
    """Every message invariant over every socket of the run."""
    seen = _observe(history)
    problems = list(seen.problems)
    for record in history.sockets:
        problems += _duplicates(record)
        if history.history:
            problems += _stream_order(record, history, seen)
            problems += _fresh_start(record, history, seen)
        else:
            problems += _sender_order(record, history.messages)
    problems += _markers(history, markers)
    return problems


def _observe(history: History) -> _Seen:
    seen = _Seen({}, {}, {}, [])
    for record in history.sockets:
        for frame in record.frames:
            slot = _slot(frame)
            if slot is None or frame.key is None:
                continue
            if seen.at.setdefault(slot, frame.key) != frame.key:
                seen.problems.append(f"stream {slot[0]} epoch {slot[1]} offset {slot[2]} "
                                     f"carried two messages: {seen.at[slot]} and {frame.key}")
            if seen.where.setdefault(frame.key, slot) != slot:
                seen.problems.append(f"message {frame.key} was sequenced twice: at "
                                     f"{seen.where[frame.key]} and {slot}")
            stream_epoch = (slot[0], slot[1])
            seen.highest[stream_epoch] = max(seen.highest.get(stream_epoch, 0), slot[2])
    seen.problems = sorted(set(seen.problems))
    return seen


def _slot(frame: Received) -> Slot | None:
    if frame.kind != "message" or frame.stream is None or frame.offset is None:
        return None
    return frame.stream, str(frame.epoch), frame.offset


def _duplicates(record: SocketRecord) -> list[str]:
    counts = Counter(frame.key for frame in record.frames if frame.key is not None)
    return [f"{_who(record)} received message {key} {count} times"
            for key, count in sorted(counts.items()) if count > 1]


def _who(record: SocketRecord) -> str:
    return f"client {record.client} sid {record.sid} on {record.node_id}"


def _stream_order(record: SocketRecord, history: History, seen: _Seen) -> list[str]:
    problems: list[str] = []
    state: dict[str, tuple[str, int, float]] = {}  # stream -> (epoch, offset, when)
    if record.resumed:
        for stream, (offset, epoch) in record.positions.items():
            state[stream] = (epoch, offset, record.started)
    for frame in record.frames:
        if frame.kind == "resume" and not frame.recovered:
            for stream in list(state) if "*" in frame.failed else frame.failed:
                state.pop(stream, None)
            continue
        slot = _slot(frame)
        if slot is None:
            continue
        stream, epoch, offset = slot
        before = state.get(stream)
        state[stream] = (epoch, offset, frame.at)
        if before is None or _rejoined(history, record, stream, before[2], frame.at):
            continue
        problems += _step(record, seen, stream, before, (epoch, offset))
    return problems


def _step(record: SocketRecord, seen: _Seen, stream: str, before: tuple[str, int, float],
          now: tuple[str, int]) -> list[str]:
    (old_epoch, old_offset, _), (epoch, offset) = before, now
    if epoch != old_epoch:
        problems = []
        highest = seen.highest.get((stream, old_epoch), 0)
        if highest > old_offset:
            problems.append(f"{_who(record)}: {stream} moved to epoch {epoch} after offset "
                            f"{old_offset} of epoch {old_epoch}, which went on to {highest}, "
                            "without recovered: false")
        if offset != 1:
            problems.append(f"{_who(record)}: {stream} entered epoch {epoch} at offset "
                            f"{offset}, missing 1..{offset - 1}, without recovered: false")
        return problems
    if offset <= old_offset:
        return [f"{_who(record)}: {stream} went back from offset {old_offset} to {offset} "
                f"(epoch {epoch})"]
    if offset > old_offset + 1:
        return [f"{_who(record)}: {stream} skipped offsets {old_offset + 1}..{offset - 1} "
                f"(epoch {epoch}) without recovered: false"]
    return []


def _rejoined(history: History, record: SocketRecord, stream: str, since: float,
              until: float) -> bool:
    """A join or leave of this client and this group overlapped the interval: a jump in the
    group's stream is membership, not loss."""
    if not stream.startswith("g:"):
        return False
    group = stream[2:]
    return any(client == record.client and name == group and started < until and (
        ended is None or ended > since)
        for started, ended, client, name, _join, _status in history.memberships)


def _fresh_start(record: SocketRecord, history: History, seen: _Seen) -> list[str]:
    """A socket that started a fresh session gets every broadcast and direct message sent
    (and sequenced) after its welcome, up to its close, unless it was told the stream was
    lost first, or its replica admitted it without Redis (served locally, the older socket
    of the client keeps its direct messages until the outage heals)."""
    if record.resumed or record.welcomed is None or history.degraded(record):
        return []
    problems = []
    for stream in ("all", f"c:{record.client}"):
        first = _first_after_loss(record, stream)
        if first is None:
            continue
        for message in history.messages.values():
            slot = seen.where.get(message.key)
            if (slot is None or slot[0] != stream or slot[1] != first[1]
                    or message.started <= record.welcomed
                    or (record.closed is not None and message.started >= record.closed)):
                continue
            if slot[2] < first[2]:
                problems.append(f"{_who(record)} missed {stream} message {message.key} "
                                f"(offset {slot[2]}) sent after its welcome; its first "
                                f"{stream} message was offset {first[2]}")
    return problems


def _first_after_loss(record: SocketRecord, stream: str) -> Slot | None:
    """The socket's first position on `stream`; None if it has none, or if a loss of the
    stream was reported before it."""
    for frame in record.frames:
        if frame.kind == "resume" and not frame.recovered and (
                stream in frame.failed or "*" in frame.failed):
            return None
        slot = _slot(frame)
        if slot is not None and slot[0] == stream:
            return slot
    return None


def _sender_order(record: SocketRecord, messages: dict[MessageKey, MessageRecord]) -> list[str]:
    """Messages of one sender to one target arrive in the order they were sent: within one
    call in its order, and a call that ended before another began before that one's. Two
    calls in flight together have no order between them."""
    received: dict[tuple[int, str | None], list[tuple[MessageKey, MessageRecord]]] = {}
    problems = []
    for frame in record.frames:
        key = frame.key
        message = messages.get(key) if key is not None else None
        if key is None or message is None or not message.definite:
            continue
        earlier = received.setdefault((message.via, message.target), [])
        for previous, sent in earlier:
            if _sent_before(key, message, previous, sent):
                problems.append(f"{_who(record)} received {key} after {previous}, both "
                                f"sent by replica-{message.via} to {message.target or 'everyone'}")
                break
        earlier.append((key, message))
    return problems


def _sent_before(key: MessageKey, message: MessageRecord, other: MessageKey,
                 other_message: MessageRecord) -> bool:
    if key[0] == other[0]:  # one call: its messages in order
        return key[1] < other[1]
    return message.ended is not None and message.ended < other_message.started


def _markers(history: History, markers: dict[str, int]) -> list[str]:
    """Once healed, the final broadcast and each client's final direct message reach every
    open socket."""
    problems = []
    for record in history.open_sockets():
        got = {frame.key for frame in record.frames}
        for name in ("all", record.client):
            number = markers.get(name)
            if number is not None and (number, 0) not in got:
                what = "broadcast" if name == "all" else "direct message"
                sent = history.messages.get((number, 0))
                if sent is not None and not sent.definite:
                    problems.append(f"the final {what} {number} to {_who(record)} was never "
                                    f"accepted after the cluster healed (status {sent.status})")
                    continue
                problems.append(f"{_who(record)} (open) never received the final {what} "
                                f"{number} sent after the cluster healed")
    return problems
