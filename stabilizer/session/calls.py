"""One session's requests that get a ``reply`` (protocol v2: ``rpc``, ``subscribe``,
``unsubscribe``, ``publish``): each runs in a task of its own, so a slow one never holds up
the session's other frames; at most ``rpc_max_in_flight`` run at once, each counts against
the message rate limit, and those still running when the session ends are cancelled
(their client is gone).

Requests naming the same channel are the exception: each waits for the one sent before
it, so they take effect in the order sent (an unsubscribe right after a subscribe leaves
the client out, two publishes arrive in order); other channels' requests and calls go on
beside them.

A request waiting so counts towards ``rpc_max_in_flight`` as one running does, on purpose:
the limit bounds what a client can make the server hold (a task and the request's frame,
up to max_message_size, each), and a waiting request holds as much as a running one. Not
counting them would need a second bound for them, and would only move the queue from the
client, which may send its next request when a reply comes, to the server. So the limit is
the number of requests a connection has unanswered, as a client sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import error_frame, reply_error_frame, resume_frame
from stabilizer.pure.streams import group_stream
from stabilizer.pure.v2 import (
    BadCallError,
    CallId,
    ProtocolError,
    call_id,
    parse_channel_request,
    parse_rpc,
)
from stabilizer.rpc import RPCCall
from stabilizer.services.channels import Channels
from stabilizer.services.rpc import Procedures, is_cancelling

logger = logging.getLogger("stabilizer.rpc")

#: The v2 frame types answered with a ``reply``.
REQUESTS: Final = frozenset({"rpc", "subscribe", "unsubscribe", "publish"})


class Calls:
    """The requests one session's client has running."""

    def __init__(self, ctx: NodeContext, procedures: Procedures, channels: Channels) -> None:
        self._ctx = ctx
        self._procedures = procedures
        self._channels = channels
        self._running: dict[CallId, asyncio.Task[None]] = {}
        self._newest: dict[str, asyncio.Task[None]] = {}  # by channel: the one to wait for

    def start(self, conn: Connection, kind: str, body: Mapping[str, Any]) -> None:
        """Answer a request frame of type `kind` (one of REQUESTS): start it, or reply at
        once why not.

        Each counts against the rate limit before anything else, whatever comes of it:
        past the limit, one whose id can be read gets the reply ``rate_limited``, and one
        without is dropped (a client cannot get refusals faster than the limit allows).
        """
        rate = conn.rate
        if rate is not None and not rate.take(time.monotonic()):
            self._over_rate(conn, kind, body)
            return
        try:
            ident, channel, work = self._work(conn, kind, body)
        except BadCallError as exc:
            self._reply(conn, reply_error_frame(exc.call_id, "bad_request", str(exc)))
            return
        except ProtocolError as exc:
            self._reply(conn, error_frame("bad_frame", str(exc)))
            return
        ctx = self._ctx
        if ident in self._running:
            self._reply(conn, reply_error_frame(
                ident, "bad_request", "a request with this id is still running"))
        elif len(self._running) >= ctx.config.rpc_max_in_flight:
            self._reply(conn, reply_error_frame(
                ident, "overloaded",
                f"{ctx.config.rpc_max_in_flight} requests are unanswered already (running, "
                "or waiting behind one on their channel); wait for a reply first"))
        else:
            before = self._newest.get(channel) if channel is not None else None
            joining = channel if kind == "subscribe" else None
            task = ctx.tasks.spawn(self._answer(conn, kind, ident, work, before, joining),
                                   name=f"stabilizer-{kind}-{conn.conn_id}")
            self._running[ident] = task
            if channel is not None:
                self._newest[channel] = task
            task.add_done_callback(lambda done: self._finished(ident, channel, done))

    def _over_rate(self, conn: Connection, kind: str, body: Mapping[str, Any]) -> None:
        self._ctx.stats.rate_limited += 1
        try:
            ident = call_id(body.get("id"), kind)
        except ProtocolError:
            return  # no id to reply to: dropped, as a malformed frame is
        self._reply(conn, reply_error_frame(ident, "rate_limited",
                                            "over the connection's message rate"))

    def _work(self, conn: Connection, kind: str, body: Mapping[str, Any],
              ) -> tuple[CallId, str | None, Callable[[], Awaitable[str | list[str]]]]:
        """The request's id, the channel it names (None for an rpc), and its work."""
        if kind == "rpc":
            call = parse_rpc(body)
            asked = RPCCall(method=call.method, params=call.params, client_id=conn.client_id,
                            user_id=conn.user_id, conn_id=conn.conn_id, metadata=conn.metadata)
            return call.call_id, None, lambda: self._procedures.answer(call.call_id, asked)
        request = parse_channel_request(kind, body)
        channels = self._channels
        action = {"subscribe": channels.subscribe, "unsubscribe": channels.unsubscribe,
                  "publish": channels.publish}[kind]
        return request.call_id, request.channel, lambda: action(conn, request)

    def _finished(self, ident: CallId, channel: str | None, task: asyncio.Task[None]) -> None:
        if self._running.get(ident) is task:
            del self._running[ident]
        if channel is not None and self._newest.get(channel) is task:
            del self._newest[channel]

    async def _answer(self, conn: Connection, kind: str, ident: CallId,
                      work: Callable[[], Awaitable[str | list[str]]],
                      before: asyncio.Task[None] | None, joining: str | None) -> None:
        """Run a request (once `before`, the one sent before it on its channel, ended) and
        send its reply: every request whose id could be read gets one, even when something
        of ours failed under it (logged here, not sent).

        A subscribe of a channel the connection is not in (`joining`) holds the channel's
        frames back until its reply is sent: the connection receives them from its local
        join on, before the backend has the membership (which may then fail). They follow
        the reply if the connection is in the channel by then, and are dropped if not.
        When more came than the outbox holds, those were dropped, not the connection: a
        member is then told so after the reply (``_lost``)."""
        if before is not None and not before.done():
            await asyncio.wait([before])  # (its outcome, even its cancellation, is its own)
        if joining is not None and joining in conn.groups:
            joining = None  # a member already: its messages flow as they did
        if joining is not None:
            conn.hold_channel(joining)
        try:
            await self._run(conn, kind, ident, work)
        finally:
            if joining is not None:
                conn.release_channel(joining, time.monotonic(), member=joining in conn.groups,
                                     lost=self._lost(joining))

    def _lost(self, channel: str) -> Frame | None:
        """What a member is told when messages of `channel` held for its subscribe were
        dropped: with history, the notice of a stream whose gap cannot be filled (the client
        resyncs); without, nothing (live delivery is at most once)."""
        if not self._ctx.config.keeps_history(channel):
            return None
        return Frame.text(resume_frame(0, [group_stream(channel)]))

    async def _run(self, conn: Connection, kind: str, ident: CallId,
                   work: Callable[[], Awaitable[str | list[str]]]) -> None:
        try:
            answer = await work()  # (the reply first; a subscribe may add frames after it)
        except asyncio.CancelledError:
            if is_cancelling():
                raise  # its client is gone, or the node stops: no one to answer
            logger.exception("%s %r of client %r failed", kind, ident, conn.client_id)
            answer = reply_error_frame(ident, "internal", "internal error")
        except Exception:
            logger.exception("%s %r of client %r failed", kind, ident, conn.client_id)
            answer = reply_error_frame(ident, "internal", "internal error")
        for frame in [answer] if isinstance(answer, str) else answer:
            self._reply(conn, frame)

    @staticmethod
    def _reply(conn: Connection, frame: str) -> None:
        try:
            built = Frame.text(frame)
        except UnicodeEncodeError:  # (what the frame carries was checked where it came in)
            logger.error("a reply to client %r could not be encoded; sent none",
                         conn.client_id, exc_info=True)
            return
        conn.offer(built, time.monotonic())  # (nothing if it closed meanwhile)

    def cancel(self) -> None:
        """The session ended: cancel the requests still running (they end in the node's
        tasks; one that ignores cancellation is left to the node's stop)."""
        for task in self._running.values():
            task.cancel()
