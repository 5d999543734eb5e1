"""ClientConnection: one logical connection to a stabilizer server, kept open across
restarts, failovers and outages (the I/O half of the client; pure/client_protocol.py decides,
client/v2.py adds what protocol v2 presents)."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from stabilizer.client.callbacks import notify, refuse_async
from stabilizer.client.calls import PendingCalls
from stabilizer.client.dial import Attempt, DialOptions, dial, hang_up, record_close
from stabilizer.client.frames import Frames
from stabilizer.client.inbox import FELL_BEHIND, Inbox
from stabilizer.client.requests import Requests, Subscriptions
from stabilizer.client.session_view import SessionView
from stabilizer.client.v2 import SUBPROTOCOL, ProtocolV2, TokenSource, check_options
from stabilizer.config import CloseCode
from stabilizer.pure.client_protocol import (
    ClientClosedError,
    CloseAction,
    ConnectionState,
    ControlFrame,
    ResumeResult,
    RetriesExhaustedError,
    SendTimeoutError,
    ServerClosedError,
    StateChange,
    build_url,
    close_action,
    code_name,
    url_source,
)
from stabilizer.pure.client_retry import RetryPolicy, plan_retry
from stabilizer.pure.client_v2 import outgoing
from stabilizer.pure.text import JSONValue
from stabilizer.pure.waits import wait_seconds

logger = logging.getLogger(__name__)

class ClientConnection(SessionView, Requests):
    """A WebSocket to a stabilizer server that survives restarts, failovers and outages."""

    def __init__(
        self,
        url: str | Sequence[str] | Callable[[], str],
        *,
        client_id: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        send_timeout: float = 10.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_inbox_messages: int = 1024,
        max_message_size: int | None = 16 * 2**20,
        welcome: bool = True,
        headers: Mapping[str, str] | None = None,
        on_state: Callable[[StateChange], object] | None = None,
        on_control: Callable[[ControlFrame], object] | None = None,
        on_resume: Callable[[ResumeResult], object] | None = None,
        protocol: int = 1,
        get_token: TokenSource | None = None,
        device: str | None = None,
        params: Mapping[str, JSONValue] | None = None,
        positions: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        check_options(protocol, get_token=get_token, device=device, params=params,
                      welcome=welcome)
        refuse_async(on_state=on_state, on_control=on_control, on_resume=on_resume)
        self._urls = url_source(url, client_id)
        self._client_id = client_id
        self._retry = retry or RetryPolicy()
        self._send_timeout = wait_seconds("send_timeout", send_timeout)
        self._open_timeout = wait_seconds("open_timeout", open_timeout)
        self._close_timeout = wait_seconds("close_timeout", close_timeout)
        self._v2 = None if protocol < 2 else ProtocolV2(get_token, device=device, params=params,
                                                        timeout=open_timeout)
        self._dial_options = DialOptions(open_timeout, close_timeout, max_message_size,
                                         dict(headers or {}),
                                         (SUBPROTOCOL,) if self._v2 else None)
        self._welcome = welcome
        self._on_state = on_state
        self.state = ConnectionState.CONNECTING
        self._inbox = Inbox(max_inbox_messages)
        self._calls = PendingCalls(None if self._v2 is None else self._v2.check_size)
        self._subscriptions = Subscriptions()
        self._frames = Frames(self._inbox, client_id=client_id, token=token, v2=self._v2,
                              send_timeout=send_timeout, on_control=on_control,
                              on_resume=on_resume, calls=self._calls,
                              subscriptions=self._subscriptions)
        for stream, (offset, epoch) in (positions or {}).items():  # (an earlier process's)
            self._frames.positions.accept(stream, offset, epoch)
        self._resubscriber: asyncio.Task[None] | None = None
        self._frames.on_resumed = self._resumed
        self._state_changed = asyncio.Condition()
        self._ws: WebSocket | None = None
        self._ever_opened = False
        self._error: ClientClosedError | None = None
        self._closed_by_app = False
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect, retrying per the policy, and return once a connection is open.

        Raises:
            ClientClosedError: ServerClosedError, RetriesExhaustedError or
                HandshakeRejectedError when no connection could be opened.
        """
        if self._runner is not None or self._error is not None:
            raise RuntimeError("a Connection starts once; call connect() for a new one")
        self._runner = asyncio.create_task(self._run(), name="stabilizer-client")
        try:
            async with self._state_changed:
                await self._state_changed.wait_for(
                    lambda: self._ever_opened or self._error is not None)
        except BaseException:
            await self.aclose()
            raise
        if not self._ever_opened:
            await self.aclose()
            raise self._closed_error()

    async def aclose(self) -> None:
        """Close for good (code 1000) and stop reconnecting; idempotent."""
        await self._frames.acks.handled(everyone=True)  # what recv() returned was handled
        runner, self._runner = self._runner, None
        tasks = [task for task in (runner, self._resubscriber) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._finish(ClientClosedError("the application closed this connection"),
                           by_app=True)

    async def send(self, message: str | bytes, *, timeout: float | None = None) -> None:
        """Send one message, waiting while reconnecting (up to `timeout`, else send_timeout).

        Raises:
            SendTimeoutError: no connection opened, or the send did not finish, in time.
            ClientClosedError: the connection is closed for good (the subclass says why).
            ConfigError: `timeout` is not None nor a finite number of seconds, 0 or more.
            ValueError: (v2) its frame is over the server's max_message_size (nothing sent).
        """
        if not isinstance(message, str | bytes):
            raise TypeError(f"send() takes str or bytes, got {type(message).__name__}")
        limit = self._send_timeout if timeout is None else wait_seconds("timeout", timeout)
        if self._runner is None and self._error is None:
            raise RuntimeError("start the connection first (async with connect(...))")
        frame, v2 = outgoing(message, self.protocol), self._v2
        if v2 is not None:
            v2.check_size(frame)
        stale: WebSocket | None = None
        writing = False
        try:
            async with asyncio.timeout(limit):
                while True:
                    ws = await self._wait_open(stale)
                    if v2 is not None:  # (a server reconnected to may take less)
                        v2.check_size(frame)
                    try:
                        writing = True
                        await ws.send(frame)
                        return
                    except ConnectionClosed:
                        stale, writing = ws, False  # not written: use the next connection
        except TimeoutError as exc:
            raise SendTimeoutError(
                f"the socket did not take the message within {limit}s; it may be lost"
                if writing else
                f"no connection opened within {limit}s ({self.state}); the message was not sent"
            ) from exc

    async def recv(self) -> str | bytes:
        """Return the next application message, waiting through reconnects; with protocol
        v2, acknowledge the one it returned to the calling task before (each task that
        calls it is a consumer of its own: client/acks.py).

        Raises:
            ClientClosedError: closed for good and every received message was returned.
        """
        if self._runner is None and self._error is None:
            raise RuntimeError("start the connection first (async with connect(...))")
        await self._frames.acks.handled()  # the previous message was handled
        item = await self._inbox.get(lambda: self._error is not None)
        if item is None:
            raise self._closed_error()
        message, token = item
        self._frames.acks.taken(token)
        return message

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                message = await self.recv()
            except ClientClosedError:
                if self._closed_by_app:
                    return
                raise
            yield message

    def _closed_error(self) -> ClientClosedError:
        assert self._error is not None
        return copy.copy(self._error)  # each raise gets its own traceback

    async def _wait_open(self, stale: WebSocket | None) -> WebSocket:
        async with self._state_changed:
            await self._state_changed.wait_for(
                lambda: self._error is not None or (
                    self._ws is not None and self._ws is not stale))
            if self._error is not None:
                raise self._closed_error()
            assert self._ws is not None
            return self._ws

    async def _run(self) -> None:
        """Connect, serve and reconnect until closed for good; owns every socket."""
        unopened, failures, delay = 0, 0, 0.0
        try:
            await self._set_state(StateChange(ConnectionState.CONNECTING))
            while True:
                if delay > 0:
                    await asyncio.sleep(delay)
                attempt = await self._attempt()
                unopened = 0 if attempt.opened else unopened + 1
                failures, delay = await self._plan(attempt, unopened, failures)
        except ClientClosedError as exc:
            await self._finish(exc)
        except Exception as exc:  # a bug: end the client loudly rather than hang its users
            logger.error("stabilizer client failed", exc_info=True)
            await self._finish(ClientClosedError(f"client failed unexpectedly: {exc!r}"))

    async def _plan(self, attempt: Attempt, unopened: int, failures: int) -> tuple[int, float]:
        """Return the failures in a row and the next delay; raise when there is none."""
        code, reason = attempt.code, attempt.reason
        action = close_action(code, used_token=attempt.used_token)
        if action is CloseAction.STOP:
            raise ServerClosedError(f"server closed with {code_name(code)}"
                                    f"{': ' + reason if reason else ''}; not reconnecting",
                                    code=code, reason=reason)
        limit = self._retry.max_attempts
        if limit is not None and unopened >= limit:
            raise RetriesExhaustedError(f"{unopened} attempts in a row failed; last: "
                                        f"{code_name(code)} {reason}", code=code, reason=reason)
        failures, delay = plan_retry(self._retry, failures, code=code, reason=reason,
                                     stable=attempt.stable, shed=attempt.shed,
                                     admitted=attempt.admitted)
        if action is CloseAction.RETRY_WITHOUT_TOKEN:
            logger.info("token refused (%s); reconnecting with a fresh session", code)
            self._frames.token, delay = None, 0.0
        state = ConnectionState.RECONNECTING if self._ever_opened else ConnectionState.CONNECTING
        await self._set_state(StateChange(state, failures=failures, delay=delay, close_code=code,
                                          close_reason=reason, url=attempt.url))
        return failures, delay

    async def _attempt(self) -> Attempt:
        """Open one socket and serve it until it closes; report how it ended."""
        frames = self._frames
        attempt = Attempt(url=self._urls(), used_token=frames.token is not None)
        access_token = None
        if self._v2 is not None:  # credentials and the reconnect token go in the connect frame
            target = build_url(attempt.url)
            try:
                access_token = await self._v2.token()
            except ClientClosedError:
                raise
            except Exception as exc:  # the next attempt asks again
                logger.warning("get_token failed; retrying", exc_info=True)
                attempt.reason = f"get_token failed: {exc!r}"
                return attempt
        else:
            positions = frames.positions.encode() if frames.token is not None else None
            target = build_url(attempt.url, token=frames.token, positions=positions)
        ws = await dial(attempt, target, self._dial_options)
        if ws is None:
            return attempt
        try:
            await self._serve(ws, attempt, access_token)
        finally:
            if self._v2 is not None:
                await self._v2.stop()
            await hang_up(ws, self._close_timeout)
        return attempt

    async def _serve(self, ws: WebSocket, attempt: Attempt, access_token: str | None) -> None:
        """Read `ws` until it closes, never waiting for the application (client/inbox.py):
        pings, closes and replies are seen at once, whatever the application does."""
        loop = asyncio.get_running_loop()
        opened_at = math.inf
        self._inbox.new_socket()
        shedder = asyncio.create_task(self._shed(ws, attempt), name="stabilizer-shed")
        try:
            if self._v2 is not None:
                await self._v2.greet(ws, attempt.url, token=access_token,
                                     reconnect_token=self._frames.token,
                                     positions=self._frames.resume_positions(),
                                     channels=sorted(self._subscriptions.active))
            if self._welcome:
                async with asyncio.timeout(self._open_timeout):
                    first = await ws.recv()
                await self._frames.handle(ws, first)  # the session frame: token, node id
            await self._open(ws, attempt)
            opened_at = loop.time()
            while True:
                await self._frames.handle(ws, await ws.recv())
        except ConnectionClosed as exc:
            record_close(attempt, exc, self._dial_options.max_message_size)
        except TimeoutError:
            attempt.reason = "no session frame in time" if not attempt.opened else (
                "could not write a pong in time")
        finally:
            shedder.cancel()
            await asyncio.wait([shedder])
            self._calls.lost(ws)
            attempt.stable = loop.time() - opened_at >= self._retry.stable_after
            async with self._state_changed:
                if self._ws is ws:
                    self._ws = None
                    self._state_changed.notify_all()
        if attempt.opened:
            logger.info("stabilizer connection to %s closed: %d %s", self.node_id,
                        attempt.code, attempt.reason)

    async def _shed(self, ws: WebSocket, attempt: Attempt) -> None:
        """Close `ws` once a full inbox turned one of its messages away and the application
        has drained it to half since, after the replies its calls wait for: the next socket
        resumes from the last message the inbox kept (client/inbox.py), at once."""
        await self._inbox.fell_behind()
        await self._calls.settled(ws)
        attempt.shed, attempt.admitted = True, self._inbox.admitted
        attempt.code, attempt.reason = CloseCode.TRY_AGAIN_LATER, FELL_BEHIND
        logger.info("the application fell behind (max_inbox_messages=%d); reconnecting to "
                    "resume after the messages it holds", self._inbox.limit)
        await ws.close(attempt.code, attempt.reason)

    async def _open(self, ws: WebSocket, attempt: Attempt) -> None:
        reconnect = self._ever_opened
        attempt.opened = self._ever_opened = True
        async with self._state_changed:
            self._ws = ws
            self._state_changed.notify_all()
        logger.info("stabilizer connection open on node %s", self.node_id)
        await self._set_state(StateChange(ConnectionState.OPEN, url=attempt.url))
        if reconnect and not self._frames.reopened(ws) and self._subscriptions.active:
            self._resumed(False)  # groups end without history: subscribe to each again

    def _resumed(self, kept: bool) -> None:
        """After a reconnect, once its resume frame came (the channels the server ended
        while the client was away were told before it): a session the server forgot (or
        that kept none) took its memberships with it, so every channel is subscribed again;
        one it `kept` keeps them, but presence is followed per connection."""
        if not self._subscriptions.active or (kept and not self._subscriptions.follows_presence):
            return
        if self._resubscriber is not None and not self._resubscriber.done():
            self._resubscriber.cancel()
        self._resubscriber = asyncio.create_task(  # reading must go on meanwhile
            self._subscribe_again(self._send_timeout, presence_only=kept),
            name="stabilizer-resubscribe")

    async def _set_state(self, change: StateChange) -> None:
        async with self._state_changed:
            self.state = change.state
            self._state_changed.notify_all()
        notify(self._on_state, change)

    async def _finish(self, error: ClientClosedError, *, by_app: bool = False) -> None:
        if self._error is not None:
            return
        self._error, self._closed_by_app = error, by_app
        self._inbox.wake()
        if not by_app:
            logger.info("stabilizer client closed for good: %s", error)
        await self._set_state(StateChange(ConnectionState.CLOSED, close_code=error.code,
                                          close_reason=error.reason,
                                          error=None if by_app else error))
