"""The client's requests in flight (protocol v2: rpc, subscribe, unsubscribe, publish;
docs/protocol.md 6.5 and 6.6): each waits for the ``reply`` with its id on the socket it
was sent on. One whose socket closes first fails with ``disconnected``: it may have taken
effect, so it is never sent again.

A caller that must record what its request did before the frames behind the reply are
handled (a subscription, which gets the channel's messages that follow) passes
``on_reply``: it runs in the reader, as the reply settles the call."""

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

#: Told whether the call succeeded, once, when it ends (client/calls.py).
OnReply = Callable[[bool], object]


class PendingCalls:
    """Calls sent and not answered yet, by id."""

    def __init__(self, check_size: Callable[[str], None] | None = None) -> None:
        self._ids = itertools.count(1)
        self._check_size = check_size  # raises ValueError for a frame the server refuses
        self._waiting: dict[int, tuple[WebSocket, asyncio.Future[JSONValue], _Once]] = {}
        self._fewer = asyncio.Event()  # a call stopped waiting

    async def call(self, open_socket: Callable[[WebSocket | None], Awaitable[WebSocket]],
                   build: Callable[[int], str], timeout: float,
                   on_reply: OnReply | None = None) -> JSONValue:
        """Send the request `build(call_id)` makes on an open socket (`open_socket(stale)`
        waits for one other than `stale`) and return the result its reply carries, all
        within `timeout`. (The reader gets to the reply whatever the application does: it
        never waits for a full inbox, client/inbox.py.) `on_reply(succeeded)` runs once:
        in the reader when the reply arrives (before the next frame is read) or the socket
        closes, else as the call fails. (A reply read just as the call times out, or is
        cancelled, has told it already: the call raises all the same.)

        Raises:
            RPCError: the server's error, ``timeout`` or ``disconnected``.
            ValueError, TypeError: what `build` raises for a bad request; ValueError for
                one the server would refuse (and close the connection for) as too large.
            ClientClosedError: closed for good before the request was sent.
        """
        call_id, ending = next(self._ids), _Once(on_reply)
        stale: WebSocket | None = None
        try:
            frame = build(call_id)
            self._fits(frame)
            async with asyncio.timeout(timeout):
                while True:
                    ws = await open_socket(stale)
                    self._fits(frame)  # (a server reconnected to may take less)
                    answer = self.expect(call_id, ws, ending)
                    try:
                        await ws.send(frame)
                    except ConnectionClosed:  # not sent: it cannot have run; next socket
                        self.forget(call_id)
                        stale = ws
                        continue
                    result = await answer
                    break
        except TimeoutError as exc:
            ending(False)
            raise RPCError("timeout", f"no reply within {timeout:g}s; the call may have "
                                      "run") from exc
        except BaseException:
            ending(False)
            raise
        finally:
            self.forget(call_id)
        ending(True)
        return result

    def _fits(self, frame: str) -> None:
        if self._check_size is not None:
            self._check_size(frame)

    def expect(self, call_id: int, ws: WebSocket, ending: _Once) -> asyncio.Future[JSONValue]:
        """The future the reply to `call_id`, about to be sent on `ws`, settles (and runs
        `ending` as it does)."""
        future: asyncio.Future[JSONValue] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = (ws, future, ending)
        return future

    def forget(self, call_id: int) -> None:
        """The caller stopped waiting (answered, timed out or cancelled)."""
        if self._waiting.pop(call_id, None) is not None:
            self._fewer.set()

    async def settled(self, ws: WebSocket) -> None:
        """Wait until no call sent on `ws` waits for its reply."""
        while any(sent_on is ws for sent_on, _, _ in self._waiting.values()):
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
        _ws, future, ending = entry
        if future.done():
            return  # (its caller stopped waiting: it tells on_reply itself)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        ending(error is None)

    def lost(self, ws: WebSocket) -> None:
        """`ws` closed: its calls will get no reply."""
        for call_id, (sent_on, future, ending) in list(self._waiting.items()):
            if sent_on is ws:
                del self._waiting[call_id]
                self._fewer.set()
                if not future.done():
                    future.set_exception(RPCError(
                        "disconnected", "the connection closed before the reply; the call "
                        "may have run"))
                    ending(False)


class _Once:
    """Calls `on_reply` the first time it is called, then never again."""

    __slots__ = ("_on_reply",)

    def __init__(self, on_reply: OnReply | None) -> None:
        self._on_reply = on_reply

    def __call__(self, succeeded: bool) -> None:
        on_reply, self._on_reply = self._on_reply, None
        if on_reply is not None:
            on_reply(succeeded)
