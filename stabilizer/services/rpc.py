"""Remote procedures a v2 client may call (docs/protocol.md, section 6.5): the node's
registry of them, and the answer to one call, always a ``reply`` frame.

A procedure's failure is the caller's answer, never the connection's end: an RPCError it
raises becomes the reply's error as it says; any other exception, a result that is not
JSON, or running past ``rpc_timeout`` becomes a reply with a fixed code, and the server's
log (not the client) gets the details.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from stabilizer.errors import APPLICATION_FAILURES, ConfigError, RPCError
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import reply_error_frame, reply_frame
from stabilizer.pure.v2 import is_method
from stabilizer.rpc import RPCCall, RPCHandler

logger = logging.getLogger(__name__)

UNKNOWN_METHOD: Final = "unknown_method"
TIMEOUT: Final = "timeout"
INTERNAL: Final = "internal"


class Procedures:
    """The procedures registered on this node, by name."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._handlers: dict[str, RPCHandler] = {}

    def register(self, method: str, handler: RPCHandler) -> None:
        """Make `handler` answer calls of `method`.

        Raises:
            ConfigError: a name a client could not send, a handler that is not callable,
                or a name already taken.
        """
        if not is_method(method):
            raise ConfigError(f"an RPC method name is 1-128 characters of A-Z a-z 0-9 and "
                              f". _ : / -, got {method!r}")
        if not callable(handler):
            raise ConfigError(f"the handler of RPC method {method!r} is not callable")
        if method in self._handlers:
            raise ConfigError(f"RPC method {method!r} is registered already")
        self._handlers[method] = handler

    def adopt(self, earlier: Procedures) -> None:
        """Take the procedures registered on `earlier` (the node this one replaces)."""
        self._handlers.update(earlier._handlers)

    def names(self) -> list[str]:
        """The registered method names, sorted."""
        return sorted(self._handlers)

    async def answer(self, call_id: int | str, call: RPCCall) -> str:
        """Run the procedure `call` names; return the ``reply`` frame for the client."""
        stats = self._ctx.stats
        stats.rpc_calls += 1
        handler = self._handlers.get(call.method)
        if handler is None:
            stats.rpc_failures += 1
            return reply_error_frame(call_id, UNKNOWN_METHOD,
                                     f"no procedure named {call.method!r}")
        result, refusal = await guarded(self._ctx, call_id, f"RPC {call.method!r}",
                                        call.client_id, lambda: handler(call))
        if refusal is None:
            try:
                return reply_frame(call_id, result)
            except (TypeError, ValueError, RecursionError) as exc:
                logger.error("RPC %r returned a value that is not JSON: %s", call.method, exc)
                refusal = reply_error_frame(call_id, INTERNAL, "internal error")
        stats.rpc_failures += 1
        return refusal


async def guarded(ctx: NodeContext, call_id: int | str, what: str, client_id: str,
                  work: Callable[[], Awaitable[Any] | Any]) -> tuple[Any, str | None]:
    """Run the application's code for a client's call, bounded by rpc_timeout: (its value,
    None), or (None, the ``reply`` frame that refuses the call): the RPCError it raised,
    ``timeout``, or ``internal`` for any other exception, a CancelledError that is not the
    task's own cancellation and the code's SystemExit or KeyboardInterrupt included (logged
    here, not sent)."""
    try:
        async with asyncio.timeout(ctx.config.rpc_timeout) as deadline:
            result = work()
            if inspect.isawaitable(result):
                result = await result
            return result, None
    except RPCError as exc:
        try:
            return None, reply_error_frame(call_id, exc.code, exc.message, exc.data)
        except (TypeError, ValueError, RecursionError):
            logger.error("%s raised an RPCError whose data is not JSON: %r", what, exc.data)
            return None, reply_error_frame(call_id, exc.code, exc.message)
    except TimeoutError:
        if not deadline.expired():  # the code's own TimeoutError: like any other exception
            logger.error("%s of client %r failed", what, client_id, exc_info=True)
            return None, reply_error_frame(call_id, INTERNAL, "internal error")
        logger.warning("%s of client %r ran past rpc_timeout (%gs) and was cancelled", what,
                       client_id, ctx.config.rpc_timeout)
        return None, reply_error_frame(call_id, TIMEOUT, "it did not finish in time")
    except asyncio.CancelledError:
        if is_cancelling():
            raise  # the call's own: its client is gone, or the node stops
        # the code awaited something cancelled elsewhere: its failure, like any other
        logger.error("%s of client %r failed", what, client_id, exc_info=True)
        return None, reply_error_frame(call_id, INTERNAL, "internal error")
    except APPLICATION_FAILURES:
        logger.error("%s of client %r failed", what, client_id, exc_info=True)
        return None, reply_error_frame(call_id, INTERNAL, "internal error")


def is_cancelling() -> bool:
    """Whether the running task is being cancelled (a CancelledError it catches is its
    own), rather than handed one from something it awaited."""
    current = asyncio.current_task()
    return current is None or current.cancelling() > 0
