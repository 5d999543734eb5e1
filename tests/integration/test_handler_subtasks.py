"""disconnect(client_id) from a handler whose socket the node closed (replaced) returns quietly
also when the handler reads its socket in a sub-task (asyncio.gather(receiver()),
create_task, a TaskGroup): docs/migration.md promises the new tab stays connected. A task
the handler starts for another purpose still disconnects other clients, and one that
outlives its handler acts as any other task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from stabilizer import CloseCode, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def _gathered(receiver: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(receiver)


async def _task(receiver: Coroutine[Any, Any, None]) -> None:
    await asyncio.create_task(receiver)


async def _task_group(receiver: Coroutine[Any, Any, None]) -> None:
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver)


RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], Awaitable[None]]] = {
    "gather": _gathered, "create_task": _task, "task_group": _task_group}


@pytest.mark.parametrize("run", RUNNERS.values(), ids=list(RUNNERS))
async def test_a_replaced_handler_reading_in_a_sub_task_leaves_the_new_tab_open(
    make_manager: ManagerFactory,
    run: Callable[[Coroutine[Any, Any, None]], Awaitable[None]],
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    tab1, tab2 = FakeSocket("tab1"), FakeSocket("tab2")
    connected = asyncio.Event()

    async def receiver() -> None:
        await tab1.closed_event.wait()  # ... receive_text() raises WebSocketDisconnect ...
        await manager.disconnect("alice")  # the seed's cleanup line

    async def handler() -> None:
        await manager.connect("alice", tab1)
        connected.set()
        await run(receiver())

    old_handler = asyncio.create_task(handler())
    async with asyncio.timeout(5.0):
        await connected.wait()
    await manager.connect("alice", tab2)  # tab 1 is closed with 4500
    async with asyncio.timeout(5.0):
        await old_handler
    assert (await tab1.wait_closed())[0] == CloseCode.REPLACED
    assert tab2.closed is None
    assert manager.is_connected("alice")
    assert await manager.send_to_client("alice", "still here")
    await tab2.expect("still here")


async def test_a_replaced_handlers_sub_task_still_disconnects_another_client(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    tab1, tab2, bob = FakeSocket("tab1"), FakeSocket("tab2"), FakeSocket("bob")
    await manager.connect("bob", bob)
    connected = asyncio.Event()

    async def handler() -> None:
        await manager.connect("alice", tab1)
        connected.set()
        await tab1.closed_event.wait()
        await asyncio.gather(manager.disconnect("bob"))  # another client, from a sub-task

    old_handler = asyncio.create_task(handler())
    async with asyncio.timeout(5.0):
        await connected.wait()
    await manager.connect("alice", tab2)
    async with asyncio.timeout(5.0):
        await old_handler
    assert (await bob.wait_closed())[0] == CloseCode.NORMAL
    assert manager.get_active_connections() == ["alice"]


async def test_a_task_that_outlives_its_handler_disconnects_as_any_task(
    make_manager: ManagerFactory,
) -> None:
    """A background task a handler started keeps the handler's context, not its identity:
    once the (replaced) handler returned, its disconnect("alice") closes alice's current
    socket, as the same call from any other task does."""
    manager = make_manager(WebSocketConfig(**QUIET))
    tab1, tab2 = FakeSocket("tab1"), FakeSocket("tab2")
    connected, kick = asyncio.Event(), asyncio.Event()

    async def admin_task() -> None:
        await kick.wait()
        await manager.disconnect("alice")

    async def handler() -> asyncio.Task[None]:
        await manager.connect("alice", tab1)
        admin = asyncio.create_task(admin_task())
        connected.set()
        await tab1.closed_event.wait()  # replaced; this handler ends without a disconnect
        return admin

    old_handler = asyncio.create_task(handler())
    async with asyncio.timeout(5.0):
        await connected.wait()
    await manager.connect("alice", tab2)
    async with asyncio.timeout(5.0):
        admin = await old_handler
    kick.set()
    async with asyncio.timeout(5.0):
        await admin
    assert (await tab2.wait_closed())[0] == CloseCode.NORMAL
    assert not manager.is_connected("alice")
