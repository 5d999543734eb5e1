"""Turns: one holder per client id at a time, several ids taken without cycles, no leftovers."""

from __future__ import annotations

import asyncio

from stabilizer.services.delivery.turns import Turns


async def test_a_second_holder_of_a_key_waits_for_the_first() -> None:
    turns = Turns()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with turns.hold("alice"):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with turns.hold("alice"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await inside.wait()
    other_key = asyncio.create_task(_enter(turns, "bob"))
    await asyncio.wait_for(other_key, 1.0)  # another key does not wait
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert order == ["first in", "first out", "second in"]
    assert len(turns) == 0


async def test_holders_of_overlapping_keys_never_deadlock() -> None:
    turns = Turns()
    done: list[int] = []

    async def holder(n: int, keys: tuple[str, ...]) -> None:
        async with turns.hold(*keys):
            await asyncio.sleep(0)
            done.append(n)

    async with asyncio.timeout(2.0):
        await asyncio.gather(*(holder(n, ("a", "b", "c") if n % 2 else ("c", "b", "a", "a"))
                               for n in range(20)))
    assert sorted(done) == list(range(20))
    assert len(turns) == 0


async def held(turns: Turns, key: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A task that holds `key`'s turn until the event returned is set."""
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.hold(key):
            inside.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await inside.wait()
    return task, release


async def test_a_cancelled_waiter_leaves_no_turn_behind() -> None:
    turns = Turns()
    first, release = await held(turns, "alice")
    waiter = asyncio.create_task(_enter(turns, "alice"))
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await first
    assert waiter.cancelled()
    assert len(turns) == 0


async def test_a_key_is_in_while_its_turn_is_held() -> None:
    turns = Turns()
    assert "alice" not in turns
    first, release = await held(turns, "alice")
    waiter = asyncio.create_task(_enter(turns, "alice"))
    assert "alice" in turns
    assert "bob" not in turns
    release.set()
    await asyncio.gather(first, waiter)
    assert "alice" not in turns


async def _enter(turns: Turns, key: str) -> None:
    async with turns.hold(key):
        pass
