"""Writing without a task per frame: step a send coroutine by hand, and finish it in a task
only when it suspends.

This is the one place that steps a coroutine outside asyncio's Task. It uses public
behaviour only: ``coroutine.send`` / ``throw`` (PEP 342) and the contract that a coroutine
awaiting an asyncio Future yields that future and may be resumed once it is done.
tests/unit/test_stepping.py checks that contract against the running Python, so a release
that changes it fails there loudly rather than in production. (On Python 3.12+,
``asyncio.Task(..., eager_start=True)`` gives the same first step, at the price of a Task
object per frame.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

Send = Coroutine[Any, Any, None]


class Suspended:
    """A send that did not finish in its first step: the coroutine and what it waits for."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Send, waiting_on: object) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def cancel(self) -> None:
        """Cancel the future the send waited on when it suspended, if it is still pending:
        what cancelling a Task does at once to the future its coroutine awaits. (Once
        finish_send drives the send, cancelling its task does that.)"""
        waiting_on = self.waiting_on
        if isinstance(waiting_on, asyncio.Future) and not waiting_on.done():
            waiting_on.cancel()

    def close(self) -> None:
        """Abandon the send: run its ``finally`` blocks (no-op once it finished)."""
        self.coro.close()


def start_send(coro: Send) -> Suspended | None:
    """Run `coro` up to its first suspension; None when it finished within that step.

    Raises:
        Exception: whatever the send raised in its first step.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return Suspended(coro, waiting_on)


async def finish_send(suspended: Suspended) -> None:
    """Drive a suspended send to its end from inside a task, as the task's own step would.

    The coroutine reads the outcome of what it waited for (result, exception, cancellation)
    itself. A future it waits on is this task's to await: cancelling the task cancels that
    future at once, as a Task cancels the one its coroutine awaits (code that keeps such a
    future, as a drain waiter, may check that it was cancelled before it makes another),
    and the coroutine reads the cancellation from it. A cancellation that finds nothing
    awaited is thrown into the coroutine, which unwinds its own ``finally`` blocks.
    """
    coro, waiting_on = suspended.coro, suspended.waiting_on
    try:
        while True:
            if isinstance(waiting_on, asyncio.Future):
                # taken over as a Task takes the future its coroutine yields (the flag is
                # asyncio's documented protocol for future-likes, see asyncio.isfuture)
                waiting_on._asyncio_future_blocking = False
                try:
                    await waiting_on
                except asyncio.CancelledError as exc:
                    if not waiting_on.cancelled():  # this task, after the future was done
                        waiting_on = coro.throw(exc)
                        continue
                except Exception:  # (the coroutine reads it from the future)
                    pass
            else:  # a bare yield asks for one turn of the loop
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError as exc:
                    waiting_on = coro.throw(exc)
                    continue
            waiting_on = coro.send(None)
    except StopIteration:
        return
