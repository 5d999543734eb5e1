"""README: `history_ttl` is the "seconds a stream is kept after its last message"; Redis
expires the keys by itself. The embedded backend used to forget a stream only when it was
read again, so every `c:<client>`, `u:<user>` and `g:<group>` stream that carried a message
stayed for the life of the process, with its entries: a long-running replica grew without
bound (plain clients get a new id per connect). Its maintenance sweep forgets them now (and
the entries first, when their own time runs out), from a heap of deadlines.

The wall clock of the memory streams is a fake one here, moved forward by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from stabilizer import MemoryBackend, MemoryHub, WebSocketConfig
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, Kind
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
TTL, META_TTL = 10.0, 100.0


class Clock:
    """The wall clock the memory streams read: real time plus `ahead` seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import time

        self.ahead = 0.0
        self._real = time.time
        monkeypatch.setattr("stabilizer.backends.memory.streams.time", self)

    def time(self) -> float:
        return self._real() + self.ahead


@asynccontextmanager
async def one_node() -> AsyncIterator[MemoryBackend]:
    """A memory backend of its own hub, open as node-a; its tasks end cleanly after."""
    backend = MemoryBackend(MemoryHub())
    tasks = TaskOwner()
    await backend.open("node-a", tasks)
    try:
        yield backend
    finally:
        assert await tasks.stop(2.0) == []
        await backend.aclose()


async def sequence(backend: MemoryBackend, group: str, size: int) -> None:
    """One 100-byte message on `group`'s stream (history of `size`, TTL and META_TTL)."""
    envelope = Envelope(Kind.GROUP, "node-a", group, "x" * 100)
    await backend.history.sequence(Target("group", group), envelope, size=size, ttl=TTL,
                                   meta_ttl=META_TTL)


async def test_the_sweep_forgets_streams_and_entries_whose_time_ran_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    async with one_node() as backend:
        hub = backend.hub

        async def send(group: str) -> None:
            await sequence(backend, group, size=10)

        for group in ("quiet", "busy", "again"):
            await send(group)
        clock.ahead = TTL + 1
        await send("busy")  # its times move on (its first entry's are over)
        await backend.sessions.sweep()
        assert [len(hub.streams[s].entries) for s in ("g:quiet", "g:busy")] == [0, 1]
        assert hub.streams["g:quiet"].offset == 1  # where it stands outlives its entries

        clock.ahead = META_TTL + 1
        assert (await backend.history.read("g:again", 1, "")).absent  # forgotten on read
        await send("again")  # a new stream of the name: the old one's deadline is not its own
        await backend.sessions.sweep()
        assert sorted(hub.streams) == ["g:again", "g:busy"]
        assert len(hub.streams["g:busy"].entries) == 0

        clock.ahead = TTL + META_TTL + 2
        await backend.sessions.sweep()
        assert sorted(hub.streams) == ["g:again"]
        clock.ahead = 2 * META_TTL + 2
        await backend.sessions.sweep()
        assert hub.streams == {}
        assert hub.expire_streams(clock.time() + 3600) == 0  # no deadline left behind either


async def test_entries_that_come_back_after_a_quiet_spell_go_at_their_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once a stream's entries went, its deadline waits for the stream's own time; a burst
    # after that must bring its entries' deadline back (they lived until the stream's).
    clock = Clock(monkeypatch)
    async with one_node() as backend:
        hub = backend.hub

        async def send() -> None:
            await sequence(backend, "room", size=100)

        await send()
        clock.ahead = TTL + 1
        await backend.sessions.sweep()
        assert len(hub.streams["g:room"].entries) == 0
        for _ in range(3):
            await send()
        clock.ahead = 2 * TTL + 2
        await backend.sessions.sweep()
        assert len(hub.streams["g:room"].entries) == 0
        assert hub.streams["g:room"].offset == 4
        for _ in range(3):  # quiet spells and bursts again
            await send()
            clock.ahead += TTL + 1
            await backend.sessions.sweep()
            assert len(hub.streams["g:room"].entries) == 0
        clock.ahead += META_TTL + TTL  # the stream's own time: nothing is left behind
        await backend.sessions.sweep()
        assert hub.streams == {}
        assert hub.expire_streams(clock.time() + 3600) == 0


async def test_a_long_running_node_forgets_the_streams_of_clients_long_gone(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer's growth.py: clients come, get a direct message and leave; an hour
    later the node's maintenance has forgotten their streams (it held every one, entries
    included)."""
    clock = Clock(monkeypatch)
    backend = MemoryBackend(MemoryHub())
    manager = make_manager(WebSocketConfig(history_size=50, history_ttl=1.0, session_ttl=1.0,
                                           node_ttl=1.5, **QUIET), backend=backend)
    swept_after = asyncio.Event()
    sweep = backend.sessions.sweep
    moved = False

    async def watched_sweep(*args: Any, **kwargs: Any) -> list[str]:
        ran_after = moved  # (the clock moved before this sweep began)
        ended = await sweep(*args, **kwargs)
        if ran_after:
            swept_after.set()
        return ended

    monkeypatch.setattr(backend.sessions, "sweep", watched_sweep)
    await manager.start()
    for n in range(20):
        sock = FakeSocket(f"c{n}")
        await manager.connect(f"c{n}", sock)
        assert await manager.send_to_client(f"c{n}", "hello " + "x" * 1000)
        await sock.next_json()
        await manager.disconnect(f"c{n}")  # a normal closure: its session ends
    await manager.broadcast("to nobody")
    assert len(backend.hub.streams) == 21

    clock.ahead = 3600.0
    moved = True
    async with asyncio.timeout(10):  # a bound: maintenance runs every node_ttl / 3
        await swept_after.wait()
    assert backend.hub.streams == {}
