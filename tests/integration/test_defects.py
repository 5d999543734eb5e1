"""Regression tests for issue 10, at the manager level (public API, fake sockets, real Redis).

The uvicorn-level twins of these tests are in tests/e2e/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import types
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stabilizer import (
    CloseCode,
    ConnectionEvent,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.support.fakes import FakeSocket, FakeWebSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
Nodes = Callable[..., WebSocketConnectionManager]


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Nodes]:
    """Managers sharing one store: a MemoryHub, or the session's real redis-server."""
    hub = MemoryHub()
    made: list[WebSocketConnectionManager] = []
    redis: dict[str, object] = {}
    if request.param == "redis":
        redis = {"redis_url": request.getfixturevalue("redis_url")}

    def node(node_id: str, **overrides: object) -> WebSocketConnectionManager:
        options: dict[str, Any] = {**QUIET, **redis, "node_id": node_id,
                                   "namespace": namespace, **overrides}
        backend = None if redis else MemoryBackend(hub)
        manager = WebSocketConnectionManager(WebSocketConfig(**options), backend=backend)
        made.append(manager)
        return manager

    yield node
    for manager in made:
        await manager.graceful_shutdown(timeout=2.0)


# ---------------------------------------------------------------- defect 1: split brain


async def test_simultaneous_same_id_connects_on_two_nodes_leave_one_socket(
    nodes: Nodes,
) -> None:
    """Issue 10, defect 1: the same client id admitted on two nodes at the same moment must
    end with exactly one open socket, the one presence names; the other gets 4500.

    100 pairs, all in flight together. On Redis today 40 to 95 of them keep both sockets:
    the kick published by the later register script reaches the earlier node while its
    connection is registered but not yet in its pool, and is dropped."""
    node_a, node_b = nodes("node-a"), nodes("node-b")
    await node_a.start()
    await node_b.start()
    ids = [f"twin-{index}" for index in range(100)]
    sockets = {cid: (FakeSocket(f"{cid}@a"), FakeSocket(f"{cid}@b")) for cid in ids}

    async def admit_pair(cid: str) -> None:
        on_a, on_b = sockets[cid]
        await asyncio.gather(node_a.connect(cid, on_a), node_b.connect(cid, on_b))

    await asyncio.gather(*(admit_pair(cid) for cid in ids))  # every admission completed

    async def first_close(cid: str) -> None:
        waits = [asyncio.ensure_future(s.closed_event.wait()) for s in sockets[cid]]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    waiting = [asyncio.ensure_future(first_close(cid)) for cid in ids]
    await asyncio.wait(waiting, timeout=5.0)  # a bound: each pair ends with its first close
    for task in waiting:
        task.cancel()
    problems = []
    for cid in ids:
        owner = await node_a.locate_client(cid)
        open_on = [node.node_id for node, sock in zip((node_a, node_b), sockets[cid],
                                                      strict=True) if sock.closed is None]
        codes = [sock.closed[0] for sock in sockets[cid] if sock.closed is not None]
        if open_on != [owner] or codes != [CloseCode.REPLACED]:
            problems.append(f"{cid}: open on {open_on}, presence names {owner}, "
                            f"close codes {codes}")
    assert not problems, (f"{len(problems)} of {len(ids)} pairs broke 'one client, one "
                          "socket':\n" + "\n".join(problems[:10]))


# ---------------------------------------------------------------- defect 2: retention


def holders(ref: weakref.ref[Any]) -> str:
    """Describe what still references the object behind `ref` (for failure messages)."""
    target = ref()
    if target is None:
        return "nothing"
    referrers = [r for r in gc.get_referrers(target) if not isinstance(r, types.FrameType)]
    del target
    return ", ".join(sorted(
        f"{type(r).__name__}{f' of {len(r)}' if isinstance(r, tuple | list) else ''}"
        for r in referrers))


async def collected(ref: weakref.ref[Any], *, turns: int = 20) -> bool:
    """True once the referent is garbage; lets the loop run `turns` times for close tasks
    to finish (loop turns, not time: a retained object stays retained for good)."""
    for _ in range(turns):
        gc.collect()
        if ref() is None:
            return True
        await asyncio.sleep(0)
    return False


async def with_bystander(manager: WebSocketConnectionManager) -> FakeSocket:
    """Connect a client first: its earlier heartbeat entry stays at the top of the heap, as
    on any busy node, so the loop never happens to sweep the entries behind it."""
    bystander = FakeSocket("bystander")
    await manager.connect("bystander", bystander)
    await asyncio.sleep(0)  # one loop turn: the heartbeat loop settles on its wake-up
    return bystander


def connection_ref(manager: WebSocketConnectionManager, client_id: str) -> weakref.ref[Any]:
    conn = manager.get_connection(client_id)
    assert conn is not None, f"{client_id} is not connected"
    return weakref.ref(conn)


def watch_disconnects(manager: WebSocketConnectionManager) -> dict[str, asyncio.Event]:
    """Per conn_id events set by an on_disconnect hook (the close finished)."""
    done: dict[str, asyncio.Event] = {}

    @manager.on_disconnect
    def record(event: ConnectionEvent) -> None:
        done.setdefault(event.conn_id, asyncio.Event()).set()

    return done


async def disconnected(done: dict[str, asyncio.Event], conn_id: str) -> None:
    async with asyncio.timeout(3.0):
        await done.setdefault(conn_id, asyncio.Event()).wait()


async def test_a_disconnected_connection_is_collectable_at_once(nodes: Nodes) -> None:
    """Issue 10, defect 2: after connect + disconnect nothing in the library keeps the
    Connection (today the heartbeat heap's entry does, until its next ping time)."""
    manager = nodes("node-a")
    await with_bystander(manager)
    sock = FakeSocket()
    await manager.connect("alice", sock)
    ref = connection_ref(manager, "alice")
    await manager.disconnect("alice")
    assert sock.closed is not None
    assert await collected(ref), f"closed connection still held by: {holders(ref)}"


async def test_a_session_whose_client_left_is_collectable_at_once(nodes: Nodes) -> None:
    """Issue 10, defect 2: the session path (open_session), the client goes away."""
    manager = nodes("node-a")
    await with_bystander(manager)
    ws = FakeWebSocket()
    session = manager.open_session(ws, "alice")
    async with session:
        ref = connection_ref(manager, "alice")
        assert json.loads(await ws.next())["type"] == "session"
        ws.client_says("hello")
        assert await session.receive() == "hello"
        ws.client_leaves()
        assert await session.receive() is None
    del session  # the Session object itself holds its connection
    assert manager.get_active_connections() == ["bystander"]
    assert await collected(ref), f"released session still held by: {holders(ref)}"


async def test_a_replaced_connection_is_collectable_at_once(nodes: Nodes) -> None:
    """Issue 10, defect 2: the same id connects again on the same node; the old Connection
    is closed with 4500 and must not stay referenced (today its heap entry keeps it)."""
    manager = nodes("node-a")
    await with_bystander(manager)
    done = watch_disconnects(manager)
    old_sock, new_sock = FakeSocket("old"), FakeSocket("new")
    await manager.connect("alice", old_sock)
    ref = connection_ref(manager, "alice")
    old_conn_id = ref().conn_id  # type: ignore[union-attr]
    await manager.connect("alice", new_sock)
    assert (await old_sock.wait_closed())[0] == CloseCode.REPLACED
    await disconnected(done, old_conn_id)
    assert await collected(ref), f"replaced connection still held by: {holders(ref)}"


async def test_a_connection_closed_by_its_heartbeat_is_collectable_at_once(
    nodes: Nodes,
) -> None:
    """Issue 10, defect 2: a heartbeat-timeout close (4000) leaves nothing behind."""
    manager = nodes("node-a", heartbeat_interval=0.05, heartbeat_timeout=0.1)
    done = watch_disconnects(manager)
    await with_bystander(manager)
    sock = FakeSocket()
    await manager.connect("silent", sock)
    ref = connection_ref(manager, "silent")
    conn_id = ref().conn_id  # type: ignore[union-attr]
    assert (await sock.wait_closed())[0] == CloseCode.HEARTBEAT_TIMEOUT
    await disconnected(done, conn_id)
    assert await collected(ref), f"timed-out connection still held by: {holders(ref)}"


async def test_a_group_member_is_collectable_after_it_disconnects(nodes: Nodes) -> None:
    """Issue 10, defect 2: groups and a broadcast hold connections while they are live,
    not after release."""
    manager = nodes("node-a")
    await with_bystander(manager)
    sock = FakeSocket("alice")
    await manager.connect("alice", sock)
    ref = connection_ref(manager, "alice")
    await manager.join_group("alice", "room")
    await manager.join_group("bystander", "room")
    assert (await manager.send_to_group("room", "to the room")).succeeded == 2
    assert (await manager.broadcast("to all")).succeeded == 2
    await sock.expect("to all")
    await manager.disconnect("alice")
    assert await manager.get_group_members("room") == ["bystander"]
    assert await collected(ref), f"former group member still held by: {holders(ref)}"


# ---------------------------------------------------------------- defect 3: positions

DEEP_POSITIONS = [
    "[" * 1500,
    '{"a":' * 1500,
    "[" * 100_000,  # over 64 KiB as well
    '{"all":[' + "9" * 5000 + ',"e"]}',  # over int's digit limit
    '{"all":[1e999999,"e"]}',
    '{"all":[-1,"e"]}',
    '{"all":["1","e"]}',
    '{"all":[1,""]}',
    '{"all":[true,"e"]}',
    '{"all":[1,"' + "e" * 65 + '"]}',
    '{"all":{"offset":1}}',
    "[1,2]",
    '"all"',
    "null",
    "NaN",
    "\ud800",
    "x" * (64 * 1024 + 1),
]


async def refusal(manager: WebSocketConnectionManager, client_id: str,
                  token: str | None, positions: str) -> tuple[int | None, bool]:
    """Open a session with query values; return (close code or None, admitted)."""
    ws = FakeWebSocket()
    async with manager.open_session(ws, client_id, token=token, positions=positions) as s:
        admitted = s.refused is None
        if admitted:
            ws.client_leaves()
            async for _ in s:
                pass
    return (ws.closed[0] if ws.closed else None), admitted


@pytest.mark.parametrize("positions", DEEP_POSITIONS,
                         ids=[f"positions{index}" for index in range(len(DEEP_POSITIONS))])
@pytest.mark.parametrize("history", [0, 100], ids=["history-off", "history-on"])
async def test_malformed_positions_get_the_documented_refusal(
    make_manager: Callable[..., WebSocketConnectionManager], positions: str, history: int,
) -> None:
    """Issue 10, defect 3: a malformed ``positions`` (1,500 nested ``[`` fit in a request
    line) never escapes as an exception (today: RecursionError, a 500 under uvicorn).

    With the client's own token: refused with 1008, or (history off, where positions mean
    nothing) served. With a bogus token: 4501, or 1008 (positions checked first)."""
    manager = make_manager(WebSocketConfig(history_size=history, **QUIET))
    await manager.start()
    bogus_code, _ = await refusal(manager, "alice", "anything", positions)
    assert bogus_code in (CloseCode.INVALID_TOKEN, CloseCode.POLICY_VIOLATION)
    token = manager.generate_reconnect_token("alice")
    code, admitted = await refusal(manager, "alice", token, positions)
    if history:
        assert (code, admitted) == (CloseCode.POLICY_VIOLATION, False)
    else:
        assert admitted or code == CloseCode.POLICY_VIOLATION


HOSTILE_TOKENS = [
    "[" * 1500,
    "s1." + "[" * 5000 + ".x.y",
    "s1.ünï.✓.\ud800",
    "s1." + "A" * 3000,
    "x" * (64 * 1024 + 1),
    "s1.a.b.c.d",
    "....",
]


@pytest.mark.parametrize("token", HOSTILE_TOKENS,
                         ids=[f"token{index}" for index in range(len(HOSTILE_TOKENS))])
async def test_malformed_tokens_get_4501(
    make_manager: Callable[..., WebSocketConnectionManager], token: str,
) -> None:
    """Issue 10, defect 3 (same crash class): a hostile ``token`` is refused with 4501."""
    manager = make_manager(WebSocketConfig(history_size=100, **QUIET))
    code, admitted = await refusal(manager, "alice", token, '{"all":[1,"e"]}')
    assert (code, admitted) == (CloseCode.INVALID_TOKEN, False)


# ---------------------------------------------------------------- defect 4: burnt tokens


async def test_a_token_presented_for_another_client_is_not_spent(nodes: Nodes) -> None:
    """Issue 10, defect 4: /ws/client-b?token=<client-a's token> is refused (4501), and
    client-a can still resume with that token, on the same node or another one."""
    node_a, node_b = nodes("node-a"), nodes("node-b")
    first = FakeWebSocket("client-a")
    async with node_a.open_session(first, "client-a") as session:
        welcome = json.loads(await first.next())
        first.client_leaves()
        async for _ in session:
            pass
    token = welcome["token"]
    for node in (node_a, node_b):
        thief = FakeWebSocket("client-b")
        async with node.open_session(thief, "client-b", token=token) as refused:
            assert refused.refused == CloseCode.INVALID_TOKEN
        assert thief.closed is not None
        assert thief.closed[0] == CloseCode.INVALID_TOKEN
    again = FakeWebSocket("client-a again")
    async with node_b.open_session(again, "client-a", token=token) as resumed:
        assert resumed.refused is None, (
            f"client-a's own token was refused with {again.closed} after client-b "
            "presented it")
        assert json.loads(await again.next())["resumed"] is True
