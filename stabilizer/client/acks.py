"""The acknowledgements a v2 client sends (docs/protocol.md 6.7): each goes on the socket
that brought its token last, once the application handled the message (which socket, and
where a resume starts so that a closed socket's token comes again: pure/client_acks.py).

The application has handled a message when the task recv() returned it to asks for its
next one, or has ended, or the application closes the connection. Each task that calls
recv() is a consumer of its own: several may take messages concurrently, and one asking
for the next acknowledges its own message only, never one another is still handling."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from stabilizer.pure.client_acks import OwedAcks, Place
from stabilizer.pure.client_v2 import ack_frame

logger = logging.getLogger(__name__)


class Acks:
    """What the client owes for the messages it gave the application, and the sending."""

    def __init__(self, timeout: float) -> None:
        self.owed: OwedAcks[WebSocket] = OwedAcks()
        self._timeout = timeout
        # per task that called recv(), the token of the message it returned to it last
        self._taken: dict[asyncio.Task[Any] | None, str] = {}

    def owe(self, token: str, ws: WebSocket, place: Place | None) -> None:
        """A message carrying `token` came on `ws` into the inbox."""
        self.owed.owe(token, ws, place)

    async def again(self, token: str, ws: WebSocket) -> None:
        """A duplicate brought `token` on `ws`: acknowledge it there at once if the
        application handled its message, else when it has."""
        if not self.owed.again(token, ws):
            await send_ack(ws, token, self._timeout)

    def taken(self, token: str | None) -> None:
        """recv() returns a message carrying `token` (None: none) to the calling task."""
        if token is not None:
            self._taken[asyncio.current_task()] = token

    async def handled(self, *, everyone: bool = False) -> None:
        """The calling task asks for its next message: it handled the one recv() returned
        it last, and each task that has ended handled its own; so has every consumer
        when `everyone` (the application closes). Those messages are acknowledged."""
        me = asyncio.current_task()
        done = [consumer for consumer in self._taken if everyone or consumer is me
                or (consumer is not None and consumer.done())]
        for token in [self._taken.pop(consumer) for consumer in done]:
            await self.acknowledge(token)

    async def acknowledge(self, token: str) -> None:
        """Send the acknowledgement of `token`, on the socket that brought it last."""
        while (ws := self.owed.due(token)) is not None:
            written = await send_ack(ws, token, self._timeout)
            if self.owed.sent(token, ws, written=written):
                return


async def send_ack(ws: WebSocket, token: str, timeout: float) -> bool:
    """Acknowledge `token` on `ws`; False when the socket is gone (or too slow)."""
    try:
        async with asyncio.timeout(timeout):
            await ws.send(ack_frame(token))
    except (ConnectionClosed, TimeoutError):
        logger.info("an acknowledgement found its socket closed")
        return False
    return True
