"""The Redis backend's batcher of concurrent script calls, with a fake round trip: every
caller gets an answer, also when the node stops (its task is cancelled) mid-batch."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from stabilizer.backends.redis.core import ScriptBatcher
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

    def __init__(self, tasks: TaskOwner | None) -> None:
        self.tasks = tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        assert self.tasks is not None
        return self.tasks.spawn(coro, name=name)

    async def call(self, awaitable: Any, op: str) -> Any:
        return await awaitable


class OneByOne(ScriptBatcher):
    """The batcher, its round trip (a pipeline) replaced by the batch's script calls."""

    async def _pipelined(self, batch: list[Any]) -> list[Any]:
        return [await self._script(keys=keys, args=args) for (keys, args), _ in batch]


def batcher(core: FakeCore, script: SlowScript) -> ScriptBatcher:
    return OneByOne(core, script, "route")  # type: ignore[arg-type]


async def test_calls_that_meet_in_time_share_a_batch_and_all_get_answers() -> None:
    script = SlowScript()
    b = batcher(FakeCore(TaskOwner()), script)
    first = asyncio.ensure_future(b.submit(["k"], ["a"]))
    await script.in_flight.wait()
    others = [asyncio.ensure_future(b.submit(["k"], [str(i)])) for i in range(5)]
    script.release.set()
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(first, *others) == [1] * 6


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
