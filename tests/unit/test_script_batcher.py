"""The Redis backend's batcher of concurrent script calls, with a fake round trip: every
caller gets an answer, also when the node stops (its task is cancelled) mid-batch; calls
that met a round trip in flight wait (a bounded while) for more, a caller alone never."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer.backends.records import Presence
from stabilizer.backends.redis import batcher as batching
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore
from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.errors import BackendUnavailable
from stabilizer.node.tasks import TaskOwner

BOUND = 3.0


class SlowScript:
    """A script whose round trip takes as long as the test wants."""

    sha = "0" * 40

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = asyncio.Event()  # a round trip has begun
        self.calls = 0

    def __call__(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, int]:
        self.calls += 1

        async def round_trip() -> int:
            self.in_flight.set()
            await self.release.wait()
            return 1

        return round_trip()


class FakeCore:
    cluster = True  # the batch's calls keep their keys and arguments (none packed ahead)

    def __init__(self, tasks: TaskOwner | None, batch_window: float = 0.0) -> None:
        self.tasks = tasks
        self.batch_window = batch_window

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        assert self.tasks is not None
        return self.tasks.spawn(coro, name=name)

    async def call(self, awaitable: Any, op: str) -> Any:
        return await awaitable


class OneByOne(ScriptBatcher):
    """The batcher, its round trip (a pipeline) replaced by the batch's script calls; the
    size of each batch it sent is in `sizes`."""

    sizes: list[int]

    async def _pipelined(self, calls: list[Any]) -> list[Any]:
        self.sizes.append(len(calls))
        return [await self._script(keys=keys, args=args) for keys, args in calls]


def batcher(core: FakeCore, script: SlowScript, *, hold: bool = True) -> OneByOne:
    b = OneByOne(core, script, "route", hold=hold)  # type: ignore[arg-type]
    b.sizes = []
    return b


#: a window no test waits out: a held batch goes when it is full (HELD_AT_MOST, patched)
FOREVER = 3600.0


async def met_in_flight(b: OneByOne, script: SlowScript, count: int) -> list[asyncio.Future[Any]]:
    """One call, and `count` more made while its round trip is in flight; the round trip then
    returns, and the first caller has its answer."""
    first = asyncio.ensure_future(b.submit(["k"], ["first"]))
    await script.in_flight.wait()
    met = [asyncio.ensure_future(b.submit(["k"], [f"met-{i}"])) for i in range(count)]
    script.release.set()
    async with asyncio.timeout(BOUND):
        assert await first == 1
    return met


async def test_calls_that_meet_in_time_share_a_batch_and_all_get_answers() -> None:
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner()), script)
    first = asyncio.ensure_future(b.submit(["k"], ["a"]))
    await script.in_flight.wait()
    others = [asyncio.ensure_future(b.submit(["k"], [str(i)])) for i in range(5)]
    script.release.set()
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(first, *others) == [1] * 6


async def test_calls_that_met_a_round_trip_in_flight_wait_for_more_to_share_theirs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "HELD_AT_MOST", 4)
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner(), batch_window=FOREVER), script)
    met = await met_in_flight(b, script, 2)
    later = [asyncio.ensure_future(b.submit(["k"], [f"later-{i}"])) for i in range(2)]
    async with asyncio.timeout(BOUND):  # the fourth call fills the held batch: it goes
        assert await asyncio.gather(*met, *later) == [1] * 4
    assert b.sizes == [1, 4]


async def test_a_held_batch_goes_when_its_window_ends() -> None:
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner(), batch_window=0.01), script)
    met = await met_in_flight(b, script, 2)
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(*met) == [1, 1]
    assert b.sizes == [1, 2]


async def test_a_caller_alone_is_never_held() -> None:
    script = SlowScript()
    script.release.set()
    b = batcher(FakeCore(TaskOwner(), batch_window=FOREVER), script)
    async with asyncio.timeout(BOUND):
        for i in range(5):  # each call finds no round trip in flight, nor calls waiting
            assert await b.submit(["k"], [str(i)]) == 1
    assert b.sizes == [1] * 5


async def test_a_batcher_that_may_not_hold_sends_the_calls_that_met_at_once() -> None:
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner(), batch_window=FOREVER), script, hold=False)
    met = await met_in_flight(b, script, 2)
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(*met) == [1, 1]
    assert b.sizes == [1, 2]


async def test_held_callers_get_an_answer_when_the_node_stops() -> None:
    owner = TaskOwner()
    script = SlowScript()
    b = batcher(FakeCore(owner, batch_window=FOREVER), script)
    met = await met_in_flight(b, script, 2)
    assert await owner.stop(1.0) == []
    async with asyncio.timeout(BOUND):
        for caller in met:
            with pytest.raises(BackendUnavailable, match="the node stopped"):
                await caller
    assert b.sizes == [1]


async def test_callers_get_an_answer_when_the_node_stops_mid_batch() -> None:
    owner = TaskOwner()
    script = SlowScript()
    b = batcher(FakeCore(owner), script)
    in_flight = asyncio.ensure_future(b.submit(["k"], ["a"]))
    await script.in_flight.wait()
    queued = asyncio.ensure_future(b.submit(["k"], ["b"]))  # queued when submit returns
    assert await owner.stop(1.0) == []
    async with asyncio.timeout(BOUND):
        for caller in (in_flight, queued):
            with pytest.raises(BackendUnavailable, match="the node stopped"):
                await caller


async def test_a_batch_task_cancelled_before_it_ran_does_not_block_later_calls() -> None:
    owner = TaskOwner()
    script = SlowScript()
    b = batcher(FakeCore(owner), script)
    orphan = asyncio.ensure_future(b.submit(["k"], ["a"]))
    # submit() queued the call and made the batch task, which has not run yet
    assert not script.in_flight.is_set()
    for task in owner.running():
        task.cancel()
    async with asyncio.timeout(BOUND):
        with pytest.raises(BackendUnavailable):
            await orphan
        script.release.set()
        assert await b.submit(["k"], ["later"]) == 1


async def test_before_the_backend_is_opened_a_call_runs_alone() -> None:
    script = SlowScript()
    script.release.set()
    b = batcher(FakeCore(None), script)  # no task owner yet: the manager was never started
    assert await b.submit(["k"], ["a"]) == 1
    assert script.calls == 1


@pytest.mark.parametrize("call", ["register", "unregister"])
async def test_a_presence_call_waiting_for_its_round_trip_holds_bytes_not_lists(
        call: str) -> None:
    """While a connect's (or a disconnect's) script waits in a batch, what it keeps alive
    is what the cyclic collector walks again and again in a reconnect storm: the batch
    holds the call packed (bytes), and the caller's frame no list of keys or arguments."""
    core = RedisCore(Redis(host="127.0.0.1", port=1), KeyLayout("t"), op_timeout=BOUND,
                     pool_size=2)  # (never dialled: the round trip is the test's)
    core.tasks, core.node_id = TaskOwner(), "n1"
    presence = RedisPresence(core)
    in_flight, release = asyncio.Event(), asyncio.Event()
    batches: list[list[Any]] = []

    async def held(batch: list[Any]) -> list[Any]:
        batches.append(batch)
        in_flight.set()
        await release.wait()
        return [[1, None, b"1000000"] if call == "register" else b"n1|c1|1000000"] * len(batch)

    batcher = presence._registers if call == "register" else presence._unregisters
    batcher._pipelined = held  # type: ignore[method-assign]
    waiting = (presence.register(Presence("alice", "n1", "c1", 1.0), max_cluster=None,
                                 end_groups=True) if call == "register"
               else presence.unregister("alice", "c1", end_groups=True))
    task = asyncio.ensure_future(waiting)
    try:
        async with asyncio.timeout(BOUND):
            await in_flight.wait()
        assert [type(item) for item in batches[0]] == [bytes]
        frame = waiting.cr_frame
        assert frame is not None
        assert [name for name, value in frame.f_locals.items()
                if isinstance(value, list | tuple | dict)] == []
        release.set()
        async with asyncio.timeout(BOUND):
            assert await task
    finally:
        await core.tasks.stop(1.0)


async def test_a_call_whose_caller_gave_up_while_it_waited_is_not_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that stopped waiting (its connect was cancelled, or a bound above the
    batcher ran out) was told the call failed: sending it after all would do what the
    caller was told did not happen (a reconnect token spent, a presence left behind)."""
    monkeypatch.setattr(batching, "HELD_AT_MOST", 3)
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner(), batch_window=FOREVER), script)
    met = await met_in_flight(b, script, 2)
    met[0].cancel()  # given up while held
    later = asyncio.ensure_future(b.submit(["k"], ["later"]))  # fills the batch: it goes
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(met[1], later) == [1, 1]
    assert b.sizes == [1, 2]
    assert script.calls == 3  # the first, then the two whose callers still wait


async def test_a_call_whose_caller_gave_up_on_the_wire_is_undone_once_it_succeeded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent already, the call runs whatever its caller does: its undo (a registration's
    removal) runs on the answer. A call dropped before it was sent, or answered to a
    caller still waiting, is not undone."""
    monkeypatch.setattr(batching, "HELD_AT_MOST", 2)
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner(), batch_window=FOREVER), script)
    undone: list[tuple[str, Any]] = []
    gone = b.submit(["k"], ["gone"], undo=lambda reply: undone.append(("gone", reply)))
    kept = b.submit(["k"], ["kept"], undo=lambda reply: undone.append(("kept", reply)))
    await script.in_flight.wait()  # both on the wire, in one batch
    dropped = b.submit(["k"], ["dropped"], undo=lambda reply: undone.append(("dropped", reply)))
    gone.cancel()  # type: ignore[attr-defined]  # (a future)
    dropped.cancel()  # type: ignore[attr-defined]  # given up while queued: never sent
    script.release.set()
    async with asyncio.timeout(BOUND):
        assert await kept == 1
        assert await b.submit(["k"], ["last"]) == 1  # fills the held batch: it goes
    assert undone == [("gone", 1)]
    assert script.calls == 3  # gone and kept, then last
    assert not b._undos  # nothing kept for calls that ended
