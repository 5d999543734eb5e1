"""One session's remote procedure calls: each runs in a task of its own, so a slow
procedure never holds up the session's other frames; at most ``rpc_max_in_flight`` run at
once, and those still running when the session ends are cancelled (their client is gone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import error_frame, reply_error_frame
from stabilizer.pure.rate import TokenBucket
from stabilizer.pure.v2 import BadCallError, CallId, CallRequest, ProtocolError, parse_rpc
from stabilizer.rpc import RPCCall
from stabilizer.services.rpc import Procedures


class Calls:
    """The calls one session's client has running."""

    def __init__(self, ctx: NodeContext, procedures: Procedures) -> None:
        self._ctx = ctx
        self._procedures = procedures
        self._running: dict[CallId, asyncio.Task[None]] = {}

    def start(self, conn: Connection, body: Mapping[str, Any],
              bucket: TokenBucket | None) -> None:
        """Answer an ``rpc`` frame: start its procedure, or reply at once why not."""
        try:
            request = parse_rpc(body)
        except BadCallError as exc:
            self._reply(conn, reply_error_frame(exc.call_id, "bad_request", str(exc)))
            return
        except ProtocolError as exc:
            self._reply(conn, error_frame("bad_frame", str(exc)))
            return
        ident = request.call_id
        ctx = self._ctx
        if ident in self._running:
            self._reply(conn, reply_error_frame(
                ident, "bad_request", "a call with this id is still running"))
        elif len(self._running) >= ctx.config.rpc_max_in_flight:
            self._reply(conn, reply_error_frame(
                ident, "overloaded",
                f"{ctx.config.rpc_max_in_flight} calls are running already"))
        elif bucket is not None and not bucket.take(time.monotonic()):
            ctx.stats.rate_limited += 1
            self._reply(conn, reply_error_frame(ident, "rate_limited",
                                                "over the connection's message rate"))
        else:
            task = ctx.tasks.spawn(self._call(conn, request),
                                   name=f"stabilizer-rpc-{conn.conn_id}")
            self._running[ident] = task
            task.add_done_callback(lambda done: self._finished(ident, done))

    def _finished(self, ident: CallId, task: asyncio.Task[None]) -> None:
        if self._running.get(ident) is task:
            del self._running[ident]

    async def _call(self, conn: Connection, request: CallRequest) -> None:
        call = RPCCall(method=request.method, params=request.params,
                       client_id=conn.client_id, user_id=conn.user_id,
                       conn_id=conn.conn_id, metadata=conn.metadata)
        self._reply(conn, await self._procedures.answer(request.call_id, call))

    @staticmethod
    def _reply(conn: Connection, frame: str) -> None:
        conn.offer(Frame.text(frame), time.monotonic())  # (nothing if it closed meanwhile)

    def cancel(self) -> None:
        """The session ended: cancel the calls still running (they end in the node's
        tasks; a procedure that ignores cancellation is left to the node's stop)."""
        for task in self._running.values():
            task.cancel()
