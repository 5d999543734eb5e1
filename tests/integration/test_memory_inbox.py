"""A full inbox on the embedded backend is a lost subscription, never a silent drop.

With history every message reaches even the sending node's own clients through its inbox,
and memory operations never suspend: `for x in items: await manager.broadcast(x)` fills the
inbox before the listener runs once. Past its limit the hub used to drop each envelope with
a log line, and nothing else: the sender was not told, no catch-up ran, and the messages
dropped at the end of a burst never arrived (no later message revealed the gap); a
follower's presence list stayed wrong for good. Now the first envelope that finds the inbox
full cuts it, as Redis cuts a subscriber whose output buffer overflows: the node
resubscribes, catches up every stream it follows from history (or tells its clients to
resync) and reads the presence state again. Without history delivery stays at-most-once,
and the inbox bounded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import MemoryBackend, MemoryHub, WebSocketConfig, WebSocketConnectionManager
from stabilizer.errors import BackendUnavailable
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind, encode
from tests.conftest import ManagerFactory
from tests.integration.test_presence import Follower, item
from tests.support.fakes import FakeSocket

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY: dict[str, Any] = {"history_size": 1000, "history_ttl": 60.0, "session_ttl": 60.0, **QUIET}
INBOX = 50  # a small inbox: the bursts below are a few times as long
BURST = 3 * INBOX


async def drain(sock: FakeSocket, count: int) -> list[Any]:
    """The next `count` frames (each within the socket's bound)."""
    return [await sock.next_json() for _ in range(count)]


# ------------------------------------------------------------------------- the backend


async def test_a_full_inbox_is_cut_after_what_it_holds_and_takes_envelopes_again() -> None:
    """Past its limit an envelope is refused (and counted), the inbox is cut once after
    what it holds (one over the limit at most), and once the node took the cut it queues
    again."""
    hub = MemoryHub()
    backend = MemoryBackend(hub, inbox_size=INBOX)
    other = MemoryBackend(hub)
    await backend.open("node-a", tasks=None)  # type: ignore[arg-type]  # (starts none)
    await other.open("node-b", tasks=None)  # type: ignore[arg-type]

    def raw(n: int) -> bytes:
        return encode(Envelope(Kind.BROADCAST, "node-b", None, str(n)))

    taken = [await other.routing.to_node("node-a", raw(n)) for n in range(BURST)]
    assert taken == [True] * INBOX + [False] * (BURST - INBOX)
    assert hub.dropped == BURST - INBOX
    assert hub.inboxes["node-a"].qsize() == INBOX + 1  # what it holds, then the cut
    kept = await other.history.sequence(  # in a stream: the catch-up delivers it
        Target("all"), Envelope(Kind.BROADCAST, "node-b", None, "kept"), size=10, ttl=60.0,
        meta_ttl=120.0)
    assert kept.receivers == 2  # counted, as a Redis PUBLISH counts a subscriber it then cuts
    assert hub.inboxes["node-a"].qsize() == INBOX + 1

    got: list[bytes] = []

    async def take_all() -> None:
        async with asyncio.timeout(5):  # (on the old hub: no cut, the wait never ended)
            async for envelope in backend.routing.deliveries():
                got.append(envelope)

    with pytest.raises(BackendUnavailable):
        await take_all()
    assert got == [raw(n) for n in range(INBOX)]
    assert await other.routing.to_node("node-a", raw(BURST))  # room again
    async with asyncio.timeout(5):
        async for envelope in backend.routing.deliveries():
            assert envelope == raw(BURST)
            break
    await backend.aclose()
    await other.aclose()


# ------------------------------------------------------------------------- with history


async def burst_node(make_manager: ManagerFactory, **options: Any,
                     ) -> tuple[WebSocketConnectionManager, FakeSocket]:
    manager = make_manager(WebSocketConfig(**{**HISTORY, **options}),
                           backend=MemoryBackend(MemoryHub(), inbox_size=INBOX))
    await manager.start()
    sock = FakeSocket("bob")
    await manager.connect("bob", sock)
    return manager, sock


@pytest.mark.parametrize("target", ["broadcast", "group", "client"])
async def test_a_burst_past_the_inbox_reaches_the_nodes_own_clients_whole_and_in_order(
    make_manager: ManagerFactory, target: str,
) -> None:
    """Three inboxes' worth of messages sent without yielding: the client gets every one,
    once, in order, and no resync (the history holds them all). Before, it got the first
    INBOX and then nothing, not even `recovered: false`."""
    manager, sock = await burst_node(make_manager)
    if target == "group":
        await manager.join_group("bob", "room")
    for n in range(BURST):
        if target == "broadcast":
            await manager.broadcast(f"m{n}")
        elif target == "group":
            await manager.send_to_group("room", f"m{n}")
        else:
            assert await manager.send_to_client("bob", f"m{n}")
    frames = await drain(sock, BURST)
    assert [(f["data"], f["offset"]) for f in frames] == [
        (f"m{n}", n + 1) for n in range(BURST)]
    await manager.broadcast("after")  # live traffic goes on, nothing in between
    assert (await sock.next_json())["data"] == "after"
    assert manager.backend.hub.dropped > 0  # type: ignore[attr-defined]  # (it did overflow)


async def test_a_burst_past_the_inbox_and_the_history_tells_the_client_to_resync(
    make_manager: ManagerFactory,
) -> None:
    """The history holds less than what the inbox lost: the client is told, not left
    silently short of the burst's end."""
    manager, sock = await burst_node(make_manager, history_size=INBOX // 5)
    for n in range(BURST):
        await manager.broadcast(f"m{n}")
    frames = await drain(sock, INBOX + 1)
    assert [f["offset"] for f in frames[:INBOX]] == list(range(1, INBOX + 1))
    assert frames[INBOX] == {"type": "resume", "recovered": False, "replayed": 0,
                             "failed": ["all"]}


async def test_a_presence_burst_past_the_inbox_leaves_followers_with_the_right_list() -> None:
    """A member's presence updated three inboxes' worth of times in a tight loop: a
    follower on the same node ends with its last entry. Before, it kept the one the inbox
    had room for, for good."""
    config = WebSocketConfig(presence_diff_window=0.01, **QUIET)
    async with WebSocketConnectionManager(
            config, backend=MemoryBackend(MemoryHub(), inbox_size=INBOX)) as node:
        alice = Follower(node, "alice")
        await alice.subscribe("room", {"name": "Alice"})
        await node.connect("bob", FakeSocket("bob"))
        await node.join_group("bob", "room", presence={"n": -1})
        for n in range(BURST):
            await node.update_presence("bob", "room", {"n": n})
        await alice.until({"alice": [item("alice", name="Alice")],
                           "bob": [item("bob", n=BURST - 1)]}, timeout=10.0)


# ------------------------------------------------------------------------- without history


async def test_without_history_a_burst_stays_at_most_once_and_the_inbox_bounded(
    make_manager: ManagerFactory,
) -> None:
    """Live direct messages from another node: what finds the inbox full is lost
    (at-most-once, as on Redis) and its sender told so, the inbox never holds more than its
    limit and the cut, nothing arrives twice or out of order, and the node resubscribes
    (resyncing what it may have lost), so later messages arrive."""
    hub = MemoryHub()
    a = make_manager(WebSocketConfig(node_id="a", **QUIET), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **QUIET),
                     backend=MemoryBackend(hub, inbox_size=INBOX))
    await a.start()
    await b.start()
    sock = FakeSocket("bob")
    await b.connect("bob", sock)
    sent = [await a.send_to_client("bob", [n]) for n in range(BURST)]  # (never yields)
    assert sent == [True] * INBOX + [False] * (BURST - INBOX)  # the dropped ones: False
    assert hub.inboxes["b"].qsize() == INBOX + 1
    assert await drain(sock, INBOX) == [[n] for n in range(INBOX)]
    assert await a.send_to_client("bob", ["after"])  # room again (behind the cut)
    assert await sock.next_json(timeout=10.0) == ["after"]  # nothing twice, nothing late
    assert b.stats.backend_reconnects == 1
