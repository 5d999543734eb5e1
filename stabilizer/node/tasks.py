"""One owner for every background task of a node: it starts, names, cancels and awaits them.

The node's loops (heartbeat, maintenance, listener), closers of retired sockets, event
listeners, and the backend's helper tasks (pipelined batches, per-shard readers) are all
started here, so the one stop path cancels and awaits every one of them.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Coroutine, Iterable
from typing import Any

logger = logging.getLogger(__name__)


class TaskOwner:
    """Starts named tasks, keeps them until they finish, and stops them all on request."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start `coro` as a task named `name`; it is cancelled when the owner stops."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running(self, prefix: str = "") -> list[asyncio.Task[Any]]:
        """The tasks still running whose name starts with `prefix`."""
        return [task for task in self._tasks if task.get_name().startswith(prefix)]

    async def wait(self, tasks: Iterable[asyncio.Task[Any]], timeout: float) -> None:
        """Let `tasks` finish on their own for up to `timeout` seconds; cancel the rest."""
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=max(timeout, 0.0))
        for task in late:
            task.cancel()

    async def stop(self, grace: float, *, prefix: str = "") -> list[str]:
        """Cancel the tasks whose name starts with `prefix` (all by default) and wait up to
        `grace` seconds; return a description of each that failed or did not stop."""
        return await cancel_and_wait(self.running(prefix), grace)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], grace: float) -> list[str]:
    """Cancel `tasks` and wait up to `grace` seconds; describe any that failed or hung."""
    if not tasks:
        return []
    pending: set[asyncio.Task[Any]] = set(tasks)
    for attempt in range(3):  # some libraries swallow a cancellation: ask again
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace / 3)
        if not pending:
            break
        logger.warning("%d task(s) ignored cancellation %d: %s", len(pending), attempt + 1,
                       ", ".join(task.get_name() for task in pending))
    problems = [f"{task.get_name()} did not stop within {grace:g}s" for task in pending]
    for task in pending:
        stack = task.get_stack()
        logger.error("task %s does not stop; its stack:\n%s", task.get_name(),
                     "".join(traceback.format_stack(stack[-1])) if stack else "(none)")
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            problems.append(f"{task.get_name()}: {task.exception()!r}")
    return problems
