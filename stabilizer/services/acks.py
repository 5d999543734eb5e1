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
from stabilizer.pure.acks import UNSUPPORTED, parse_ack_token
from stabilizer.pure.v2 import ProtocolError
from stabilizer.pure.wire import Envelope, Kind, encode
from stabilizer.services.delivery.router import Router

logger = logging.getLogger(__name__)


class Acks:
    """The acknowledgements this node waits for, and those its clients send back."""

    def __init__(self, ctx: NodeContext, router: Router) -> None:
        self._ctx = ctx
        self._router = router
        self._waiting: dict[str, asyncio.Future[str | None]] = {}
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
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = answer
        try:
            if not await self._router.send(client_id, payload, value, ack=ref):
                return False
            try:
                async with asyncio.timeout(timeout):
                    outcome = await answer
            except TimeoutError as exc:
                raise AckTimeoutError(
                    f"client {client_id!r} did not acknowledge within {timeout:g}s") from exc
        finally:
            self._waiting.pop(ref, None)
        if outcome == UNSUPPORTED:
            raise AckUnsupportedError(
                f"client {client_id!r} got the message but cannot acknowledge it (plain "
                "protocol: acknowledgements need protocol v2)")
        return True

    def settle(self, ref: str | None, outcome: str | None) -> None:
        """An ACK envelope (or this node's own client) answered reference `ref`."""
        answer = self._waiting.get(ref) if ref is not None else None
        if answer is not None and not answer.done():
            answer.set_result(outcome)

    def acked(self, conn: Connection, token: object) -> bool:
        """`conn`'s client acknowledged `token`; False when it is no token it was sent."""
        if not isinstance(token, str) or not conn.take_ack(token):
            return False
        self._answer(token, None)
        return True

    def unackable(self, token: str) -> None:
        """A frame asking for `token` went to a client that cannot acknowledge."""
        self._answer(token, UNSUPPORTED)

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
