"""The client's requests in flight (protocol v2: rpc, subscribe, unsubscribe, publish;
docs/protocol.md 6.5 and 6.6): each waits for the ``reply`` with its id on the socket it
was sent on. One whose socket closes first fails with ``disconnected``: it may have taken
effect, so it is never sent again."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from stabilizer.client.inbox import Inbox
from stabilizer.errors import RPCError
from stabilizer.pure.client_protocol import ControlFrame
from stabilizer.pure.client_v2 import reply_outcome
from stabilizer.pure.text import JSONValue

logger = logging.getLogger(__name__)


class PendingCalls:
    """Calls sent and not answered yet, by id."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox  # the reader reads past a full one while a call waits
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[WebSocket, asyncio.Future[JSONValue]]] = {}

    async def call(self, open_socket: Callable[[WebSocket | None], Awaitable[WebSocket]],
                   build: Callable[[int], str], timeout: float) -> JSONValue:
        """Send the request `build(call_id)` makes on an open socket (`open_socket(stale)`
        waits for one other than `stale`) and return the result its reply carries, all
        within `timeout`. Meanwhile a full inbox does not stop the reader (client/inbox.py).

        Raises:
            RPCError: the server's error, ``timeout`` or ``disconnected``.
            ValueError, TypeError: what `build` raises for a bad request.
            ClientClosedError: closed for good before the request was sent.
        """
        call_id = next(self._ids)
        frame = build(call_id)
        stale: WebSocket | None = None
        try:
            async with asyncio.timeout(timeout), self._inbox.request():
                while True:
                    ws = await open_socket(stale)
                    answer = self.expect(call_id, ws)
                    try:
                        await ws.send(frame)
                    except ConnectionClosed:  # not sent: it cannot have run; next socket
                        self.forget(call_id)
                        stale = ws
                        continue
                    return await answer
        except TimeoutError as exc:
            raise RPCError("timeout", f"no reply within {timeout:g}s; the call may have "
                                      "run") from exc
        finally:
            self.forget(call_id)

    def expect(self, call_id: int, ws: WebSocket) -> asyncio.Future[JSONValue]:
        """The future the reply to `call_id`, about to be sent on `ws`, settles."""
        future: asyncio.Future[JSONValue] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = (ws, future)
        return future

    def forget(self, call_id: int) -> None:
        """The caller stopped waiting (answered, timed out or cancelled)."""
        self._waiting.pop(call_id, None)

    def settle(self, frame: ControlFrame) -> None:
        """A ``reply`` frame arrived: settle the call it answers."""
        call_id, result, error = reply_outcome(frame)
        entry = self._waiting.pop(call_id, None) if type(call_id) is int else None
        if entry is None:
            logger.debug("a reply to call %r that no one waits for", call_id)
            return
        future = entry[1]
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def lost(self, ws: WebSocket) -> None:
        """`ws` closed: its calls will get no reply."""
        for call_id, (sent_on, future) in list(self._waiting.items()):
            if sent_on is ws:
                del self._waiting[call_id]
                if not future.done():
                    future.set_exception(RPCError(
                        "disconnected", "the connection closed before the reply; the call "
                        "may have run"))
