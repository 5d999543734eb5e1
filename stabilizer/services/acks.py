"""Acknowledged direct sends (docs/protocol.md 6.7): ``send_to_client(..., ack=True)``
returns once the client acknowledged the message, wherever it is connected.

The asking node gives the message a reference of its own and waits for it. The message
frame carries a token (reference and asking node); the v2 client sends it back once its
handler returned; the node holding the socket hands it, with the client's id, to the
asking node (itself: no Redis; another: one ACK envelope on that node's channel), which
counts answers by client against the clients the send reached (AckTally). A plain client
cannot acknowledge: its node says so at once, and the send fails with AckUnsupportedError.

A node that shuts down keeps hearing acknowledgements while it drains (Lifecycle waits for
the sends awaiting them, until its deadline); once it stops listening, every send still
waiting fails at once with ShutdownError (outcome unknown), as does any begun after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable

from stabilizer.connection.connection import Connection
from stabilizer.errors import (
    AckTimeoutError,
    AckUnsupportedError,
    BackendUnavailable,
    ShutdownError,
)
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.acks import FORGOTTEN, UNSUPPORTED, AckTally, parse_ack_token
from stabilizer.pure.v2 import ProtocolError
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.services.delivery.router import Router

logger = logging.getLogger(__name__)


class _Waiting:
    """What came back for one reference (see AckTally), and the event its sender awaits."""

    __slots__ = ("abandoned", "settled", "sole", "tally")

    def __init__(self, sole: str | None = None) -> None:
        self.tally = AckTally()
        self.sole = sole  # the one client a send_to_client addressed
        self.settled = asyncio.Event()
        self.abandoned = False  # its node stopped listening before it settled

    def answer(self, client_id: str | None, outcome: str | None) -> None:
        if client_id is None:  # an ACK from a node of an older version names no client:
            client_id = self.sole  # only a send to one client can tell whose it is
            if client_id is None:
                return
        self.tally.answer(client_id, outcome)
        self.check()

    def check(self) -> None:
        if self.tally.settled:
            self.settled.set()


class Acks:
    """The acknowledgements this node waits for, and those its clients send back."""

    def __init__(self, ctx: NodeContext, router: Router) -> None:
        self._ctx = ctx
        self._router = router
        self._waiting: dict[str, _Waiting] = {}
        self._idle = asyncio.Event()  # nothing is awaited
        self._idle.set()
        self._deaf = False  # the node stopped listening: no acknowledgement can arrive
        self._backend_log = RateLimitedLog(logger)

    async def send(self, client_id: str, payload: str | bytes, value: object,
                   timeout: float) -> bool:
        """Send to `client_id` and wait up to `timeout` seconds for its acknowledgement.
        False when no node holds the client (nothing was sent).

        Raises:
            AckTimeoutError: sent, but not acknowledged in time.
            AckUnsupportedError: delivered to a plain client, which cannot acknowledge.
            ShutdownError: the node stopped listening before the client acknowledged.
        """
        ref, waiting = self._watch(_Waiting(sole=client_id), f"client {client_id!r}")
        try:
            if not await self._router.send(client_id, payload, value, ack=ref):
                return False
            if not await self._settled(waiting, (client_id,), timeout):
                raise AckTimeoutError(
                    f"client {client_id!r} did not acknowledge within {timeout:g}s")
            self._check_heard(waiting, f"client {client_id!r}")
        finally:
            self._unwatch(ref)
        if waiting.tally.count(FORGOTTEN):
            raise AckTimeoutError(
                f"client {client_id!r} can no longer acknowledge the message: it left without "
                "a session to resume, or had too many messages unacknowledged (its node "
                "keeps the newest 1024)")
        if waiting.tally.count(UNSUPPORTED):
            raise AckUnsupportedError(
                f"client {client_id!r} got the message but cannot acknowledge it (plain "
                "protocol: acknowledgements need protocol v2)")
        return True

    async def send_to_user(self, user_id: str, payload: str | bytes, value: object,
                           timeout: float) -> int:
        """Send to every connection of `user_id`; wait up to `timeout` seconds for each
        one it reached to acknowledge it; return how many did (plain clients cannot).

        Only the connections it reached count, each once: with history a connection
        that was away when it was sent is replayed the message on its return, and one that
        resumes from before it is replayed it again, but neither acknowledgement counts a
        second time or for another connection.

        Raises:
            ShutdownError: the node stopped listening before every connection answered.
        """
        ref, waiting = self._watch(_Waiting(), f"user {user_id!r}")
        try:
            reached = await self._router.send_to_user(user_id, payload, value, ack=ref)
            await self._settled(waiting, reached, timeout)
            self._check_heard(waiting, f"user {user_id!r}")
        finally:
            self._unwatch(ref)
        return waiting.tally.count(None)

    async def drain(self, deadline: float) -> None:
        """Wait until no send awaits an acknowledgement, or the loop's clock reaches
        `deadline` (a shutdown: the node still hears them meanwhile)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()

    def stop_listening(self) -> None:
        """The node heard its last acknowledgement: every send still waiting fails at once
        with ShutdownError, and so does every send begun from now on."""
        self._deaf = True
        for waiting in self._waiting.values():
            waiting.abandoned = True
            waiting.settled.set()

    def _watch(self, waiting: _Waiting, whom: str) -> tuple[str, _Waiting]:
        """Await answers for `waiting` under a fresh reference."""
        if self._deaf:
            raise ShutdownError(f"node {self._ctx.node_id} stopped: it would not hear {whom} "
                                "acknowledge, so nothing was sent")
        ref = secrets.token_hex(8)
        self._waiting[ref] = waiting
        self._idle.clear()
        return ref, waiting

    def _unwatch(self, ref: str) -> None:
        del self._waiting[ref]
        if not self._waiting:
            self._idle.set()

    def _check_heard(self, waiting: _Waiting, whom: str) -> None:
        if waiting.abandoned and not waiting.tally.settled:
            raise ShutdownError(
                f"node {self._ctx.node_id} stopped before {whom} acknowledged: outcome "
                "unknown (the message may have been delivered and handled)")

    @staticmethod
    async def _settled(waiting: _Waiting, addressed: Iterable[str], timeout: float) -> bool:
        waiting.tally.address(addressed)
        waiting.check()
        try:
            async with asyncio.timeout(timeout):
                await waiting.settled.wait()
        except TimeoutError:
            return False
        return True

    def settle(self, ref: str | None, outcome: str | None, client_id: str | None) -> None:
        """An ACK envelope (or this node's own client) answered reference `ref` for client
        `client_id` (None: from a node of an older version, which does not say)."""
        waiting = self._waiting.get(ref) if ref is not None else None
        if waiting is not None:
            waiting.answer(client_id, outcome)

    def acked(self, conn: Connection, token: object) -> bool:
        """`conn`'s client acknowledged `token`; False when it is no token it was sent."""
        if not isinstance(token, str) or not conn.take_ack(token):
            return False
        self._answer(token, None, conn.client_id)
        return True

    def unackable(self, token: str, outcome: str, client_id: str) -> None:
        """A frame asking for `token` went to `client_id`, which cannot acknowledge it
        (UNSUPPORTED), or its acknowledgement is no longer awaited (FORGOTTEN)."""
        self._answer(token, outcome, client_id)

    def _answer(self, token: str, outcome: str | None, client_id: str) -> None:
        try:
            origin, ref = parse_ack_token(token)
        except ProtocolError:  # (tokens are checked when taken: a frame's own is sound)
            return
        ctx = self._ctx
        if origin == ctx.node_id:
            self.settle(ref, outcome, client_id)
        elif ctx.backend.is_shared:
            envelope = encode(Envelope(Kind.ACK, ctx.node_id, client_id, outcome, ref=ref))
            ctx.tasks.spawn(self._tell(origin, envelope), name="stabilizer-ack")

    async def _tell(self, origin: str, envelope: bytes) -> None:
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.routing.to_node(origin, envelope))
        except BackendUnavailable as exc:  # the asking node times out
            self._backend_log.warning("acknowledgement for node %s lost: backend "
                                      "unavailable", origin, exc=exc)
