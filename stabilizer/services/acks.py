"""Acknowledged direct sends (docs/protocol.md 6.7): ``send_to_client(..., ack=True)``
returns once the client acknowledged the message, wherever it is connected.

The asking node gives the message a reference of its own and waits for it. The message
frame carries a token (reference and asking node); the v2 client sends it back once its
handler returned; the node holding the socket hands it to the asking node (itself: no
Redis; another: one ACK envelope on that node's channel). A plain client cannot
acknowledge: its node says so at once, and the send fails with AckUnsupportedError.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from stabilizer.connection.connection import Connection
from stabilizer.errors import AckTimeoutError, AckUnsupportedError, BackendUnavailable
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.acks import FORGOTTEN, UNSUPPORTED, parse_ack_token
from stabilizer.pure.v2 import ProtocolError
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.services.delivery.router import Router

logger = logging.getLogger(__name__)


class _Waiting:
    """What came back for one reference: acknowledgements, and refusals (plain clients)."""

    __slots__ = ("acked", "expected", "forgotten", "refused", "settled")

    def __init__(self) -> None:
        self.acked = 0
        self.refused = 0
        self.forgotten = 0
        self.expected: int | None = None  # how many connections it reached, once known
        self.settled = asyncio.Event()

    def count(self, outcome: str | None) -> None:
        if outcome == UNSUPPORTED:
            self.refused += 1
        elif outcome == FORGOTTEN:
            self.forgotten += 1
        else:
            self.acked += 1
        self.check()

    def check(self) -> None:
        answered = self.acked + self.refused + self.forgotten
        if self.expected is not None and answered >= self.expected:
            self.settled.set()


class Acks:
    """The acknowledgements this node waits for, and those its clients send back."""

    def __init__(self, ctx: NodeContext, router: Router) -> None:
        self._ctx = ctx
        self._router = router
        self._waiting: dict[str, _Waiting] = {}
        self._backend_log = RateLimitedLog(logger)

    async def send(self, client_id: str, payload: str | bytes, value: object,
                   timeout: float) -> bool:
        """Send to `client_id` and wait up to `timeout` seconds for its acknowledgement.
        False when no node holds the client (nothing was sent).

        Raises:
            AckTimeoutError: sent, but not acknowledged in time.
            AckUnsupportedError: delivered to a plain client, which cannot acknowledge.
        """
        ref = secrets.token_hex(8)
        waiting = self._waiting[ref] = _Waiting()
        try:
            if not await self._router.send(client_id, payload, value, ack=ref):
                return False
            if not await self._settled(waiting, 1, timeout):
                raise AckTimeoutError(
                    f"client {client_id!r} did not acknowledge within {timeout:g}s")
        finally:
            del self._waiting[ref]
        if waiting.forgotten:
            raise AckTimeoutError(
                f"client {client_id!r} had too many messages unacknowledged: its node stopped "
                "awaiting this one's acknowledgement (it keeps the newest 1024)")
        if waiting.refused:
            raise AckUnsupportedError(
                f"client {client_id!r} got the message but cannot acknowledge it (plain "
                "protocol: acknowledgements need protocol v2)")
        return True

    async def send_to_user(self, user_id: str, payload: str | bytes, value: object,
                           timeout: float) -> int:
        """Send to every connection of `user_id`; wait up to `timeout` seconds for each
        one it reached to acknowledge it; return how many did (plain clients cannot)."""
        ref = secrets.token_hex(8)
        waiting = self._waiting[ref] = _Waiting()
        try:
            reached = await self._router.send_to_user(user_id, payload, value, ack=ref)
            await self._settled(waiting, reached, timeout)
        finally:
            del self._waiting[ref]
        return waiting.acked

    @staticmethod
    async def _settled(waiting: _Waiting, expected: int, timeout: float) -> bool:
        waiting.expected = expected
        waiting.check()
        try:
            async with asyncio.timeout(timeout):
                await waiting.settled.wait()
        except TimeoutError:
            return False
        return True

    def settle(self, ref: str | None, outcome: str | None) -> None:
        """An ACK envelope (or this node's own client) answered reference `ref`."""
        waiting = self._waiting.get(ref) if ref is not None else None
        if waiting is not None:
            waiting.count(outcome)

    def acked(self, conn: Connection, token: object) -> bool:
        """`conn`'s client acknowledged `token`; False when it is no token it was sent."""
        if not isinstance(token, str) or not conn.take_ack(token):
            return False
        self._answer(token, None)
        return True

    def unackable(self, token: str, outcome: str) -> None:
        """A frame asking for `token` went to a client that cannot acknowledge it
        (UNSUPPORTED), or its acknowledgement is no longer awaited (FORGOTTEN)."""
        self._answer(token, outcome)

    def _answer(self, token: str, outcome: str | None) -> None:
        try:
            origin, ref = parse_ack_token(token)
        except ProtocolError:  # (tokens are checked when taken: a frame's own is sound)
            return
        ctx = self._ctx
        if origin == ctx.node_id:
            self.settle(ref, outcome)
        elif ctx.backend.is_shared:
            envelope = encode(Envelope(Kind.ACK, ctx.node_id, None, outcome, ref=ref))
            ctx.tasks.spawn(self._tell(origin, envelope), name="stabilizer-ack")

    async def _tell(self, origin: str, envelope: bytes) -> None:
        ctx = self._ctx
        try:
            await ctx.ask(ctx.backend.routing.to_node(origin, envelope))
        except BackendUnavailable as exc:  # the asking node times out
            self._backend_log.warning("acknowledgement for node %s lost: backend "
                                      "unavailable", origin, exc=exc)
