"""connection/stepping.py against the running Python: a send stepped by hand and finished in
a task behaves as the same coroutine would in a Task. If a Python release changes how
coroutines awaiting futures suspend and resume, these fail first."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from stabilizer.connection.stepping import Suspended, finish_send, start_send

BOUND = 2.0  # seconds: an upper bound on waits that should end almost at once


async def test_a_send_that_completes_in_its_first_step_needs_no_task() -> None:
    log: list[str] = []

    async def work() -> None:
        log.append("sent")

    assert start_send(work()) is None
    assert log == ["sent"]


async def test_an_exception_in_the_first_step_reaches_the_caller() -> None:
    async def work() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        start_send(work())


async def test_closing_an_abandoned_send_runs_its_finally() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    unwound: list[str] = []

    async def work() -> None:
        try:
            await future
        finally:
            unwound.append("finally")

    suspended = step(work())
    suspended.close()
    assert unwound == ["finally"]


def step(coro: Coroutine[Any, Any, None]) -> Suspended:
    """Start a coroutine by hand as Connection.offer does; it must suspend."""
    suspended = start_send(coro)
    assert suspended is not None
    return suspended


async def test_finish_send_finishes_a_coroutine_through_bare_yields_and_futures() -> None:
    log: list[object] = []
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        log.append("start")
        await asyncio.sleep(0)  # a bare yield
        log.append("after bare yield")
        log.append(await future)
        await asyncio.sleep(0)
        log.append("end")

    coro = work()
    runner = asyncio.create_task(finish_send(step(coro)))
    future.set_result("future result")
    async with asyncio.timeout(BOUND):
        await runner
    assert log == ["start", "after bare yield", "future result", "end"]


async def test_finish_send_starting_on_a_future_waits_for_it() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    results: list[int] = []

    async def work() -> None:
        results.append(await future)

    coro = work()
    suspended = step(coro)
    assert suspended.waiting_on is future
    runner = asyncio.create_task(finish_send(suspended))
    asyncio.get_running_loop().call_soon(future.set_result, 7)
    async with asyncio.timeout(BOUND):
        await runner
    assert results == [7]


async def test_finish_send_lets_the_coroutine_see_its_futures_exception() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[BaseException] = []

    async def work() -> None:
        try:
            await future
        except ValueError as exc:
            seen.append(exc)

    coro = work()
    runner = asyncio.create_task(finish_send(step(coro)))
    error = ValueError("boom")
    future.set_exception(error)
    async with asyncio.timeout(BOUND):
        await runner
    assert seen == [error]


async def test_finish_send_propagates_an_exception_the_coroutine_does_not_handle() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        await future

    coro = work()
    runner = asyncio.create_task(finish_send(step(coro)))
    future.set_exception(ConnectionResetError("gone"))
    async with asyncio.timeout(BOUND):
        with pytest.raises(ConnectionResetError, match="gone"):
            await runner


@pytest.mark.parametrize("waits_on", ["future", "bare-yield"])
async def test_cancelling_finish_send_cancels_the_coroutine_and_runs_its_finally(
    waits_on: str,
) -> None:
    running = asyncio.Event()
    unwound: list[type[BaseException]] = []
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        await asyncio.sleep(0)  # started by hand on a bare yield
        running.set()
        try:
            if waits_on == "future":
                await future
            else:
                while True:
                    await asyncio.sleep(0)
        except BaseException as exc:
            unwound.append(type(exc))
            raise

    coro = work()
    runner = asyncio.create_task(finish_send(step(coro)))
    async with asyncio.timeout(BOUND):
        await running.wait()
    runner.cancel()
    async with asyncio.timeout(BOUND):
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert unwound == [asyncio.CancelledError]


async def test_a_coroutine_may_handle_the_cancellation_and_finish() -> None:
    running = asyncio.Event()
    log: list[str] = []
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleanup: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        await asyncio.sleep(0)
        running.set()
        try:
            await future
        except asyncio.CancelledError:
            log.append(await cleanup)  # an await inside the handler is driven too

    coro = work()
    runner = asyncio.create_task(finish_send(step(coro)))
    async with asyncio.timeout(BOUND):
        await running.wait()
    runner.cancel()
    asyncio.get_running_loop().call_soon(cleanup.set_result, "cleaned up")
    async with asyncio.timeout(BOUND):
        await asyncio.gather(runner, return_exceptions=True)
    assert log == ["cleaned up"]
