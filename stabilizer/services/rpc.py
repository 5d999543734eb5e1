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
from typing import Final

from stabilizer.errors import ConfigError, RPCError
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
        try:
            result = await self._run(handler, call)
        except RPCError as exc:
            stats.rpc_failures += 1
            return self._refusal(call_id, call, exc)
        except _Late:
            stats.rpc_failures += 1
            logger.warning("RPC %r of client %r ran past rpc_timeout (%gs) and was cancelled",
                           call.method, call.client_id, self._ctx.config.rpc_timeout)
            return reply_error_frame(call_id, TIMEOUT, "the procedure did not finish in time")
        except Exception:
            stats.rpc_failures += 1
            logger.error("RPC %r of client %r failed", call.method, call.client_id,
                         exc_info=True)
            return reply_error_frame(call_id, INTERNAL, "internal error")
        try:
            return reply_frame(call_id, result)
        except (TypeError, ValueError, RecursionError) as exc:
            stats.rpc_failures += 1
            logger.error("RPC %r returned a value that is not JSON: %s", call.method, exc)
            return reply_error_frame(call_id, INTERNAL, "internal error")

    async def _run(self, handler: RPCHandler, call: RPCCall) -> object:
        try:
            async with asyncio.timeout(self._ctx.config.rpc_timeout) as deadline:
                result = handler(call)
                if inspect.isawaitable(result):
                    result = await result
                return result
        except TimeoutError:
            if deadline.expired():
                raise _Late from None
            raise  # the procedure's own TimeoutError: an exception like any other

    def _refusal(self, call_id: int | str, call: RPCCall, exc: RPCError) -> str:
        try:
            return reply_error_frame(call_id, exc.code, exc.message, exc.data)
        except (TypeError, ValueError, RecursionError):
            logger.error("RPC %r raised an RPCError whose data is not JSON: %r", call.method,
                         exc.data)
            return reply_error_frame(call_id, exc.code, exc.message)


class _Late(Exception):
    """The procedure ran past rpc_timeout."""
