"""The application's callbacks, called from the client's own task.

The client calls them from the task that reads the socket, which never waits for the
application, so a callback is a plain function: an ``async def`` one is refused where it
is given (its coroutine would never run), and a coroutine a plain function returns anyway
is closed, with an error in the log. (``get_token`` is no such callback: the client awaits
it, so it may be async.)"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger("stabilizer.client")

T = TypeVar("T")


def refuse_async(**callbacks: object) -> None:
    """Refuse each ``async def`` callback given by name (None: none given).

    Raises:
        TypeError: one is async (the first, by name).
    """
    for name, callback in callbacks.items():
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
                type(callback).__call__):  # (an object whose __call__ is async)
            raise TypeError(
                f"{name} must be a plain function, not an async one: the client calls it "
                "from its reader and never awaits it; hand the work to a task or a queue "
                "(asyncio.create_task, queue.put_nowait)")


def unawaited(result: object, what: str) -> None:
    """Close a coroutine a callback returned (the client does not await it), saying so."""
    if inspect.iscoroutine(result):
        result.close()
        logger.error("%s returned a coroutine, which the client never awaits; pass a "
                     "plain function that hands the work to a task or a queue", what)


def notify(callback: Callable[[T], object] | None, value: T) -> None:
    """Call an application callback; its failure is logged, never raised into the client."""
    if callback is None:
        return
    try:
        unawaited(callback(value), f"stabilizer client callback {callback!r}")
    except Exception:  # the application's bug must not end the connection
        logger.error("stabilizer client callback %r failed", callback, exc_info=True)
