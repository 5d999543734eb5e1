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

from stabilizer.errors import RPCError
from stabilizer.pure.client_protocol import ControlFrame
from stabilizer.pure.client_v2 import reply_outcome
from stabilizer.pure.text import JSONValue

logger = logging.getLogger(__name__)


class PendingCalls:
    """Calls sent and not answered yet, by id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[WebSocket, asyncio.Future[JSONValue]]] = {}
        self._fewer = asyncio.Event()  # a call stopped waiting

    async def call(self, open_socket: Callable[[WebSocket | None], Awaitable[WebSocket]],
                   build: Callable[[int], str], timeout: float) -> JSONValue:
        """Send the request `build(call_id)` makes on an open socket (`open_socket(stale)`
        waits for one other than `stale`) and return the result its reply carries, all
        within `timeout`. (The reader gets to the reply whatever the application does: it
        never waits for a full inbox, client/inbox.py.)

        Raises:
            RPCError: the server's error, ``timeout`` or ``disconnected``.
            ValueError, TypeError: what `build` raises for a bad request.
            ClientClosedError: closed for good before the request was sent.
        """
        call_id = next(self._ids)
        frame = build(call_id)
        stale: WebSocket | None = None
        try:
            async with asyncio.timeout(timeout):
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
        if self._waiting.pop(call_id, None) is not None:
            self._fewer.set()

    async def settled(self, ws: WebSocket) -> None:
        """Wait until no call sent on `ws` waits for its reply."""
        while any(sent_on is ws for sent_on, _ in self._waiting.values()):
            self._fewer.clear()
            await self._fewer.wait()

    def settle(self, frame: ControlFrame) -> None:
        """A ``reply`` frame arrived: settle the call it answers."""
        call_id, result, error = reply_outcome(frame)
        entry = self._waiting.pop(call_id, None) if type(call_id) is int else None
        if entry is None:
            logger.debug("a reply to call %r that no one waits for", call_id)
            return
        self._fewer.set()
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
                self._fewer.set()
                if not future.done():
                    future.set_exception(RPCError(
                        "disconnected", "the connection closed before the reply; the call "
                        "may have run"))
