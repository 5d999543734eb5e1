"""ClientConnection: one logical connection to a stabilizer server, kept open across
restarts, failovers and outages (the I/O half of the client; pure/client_protocol.py decides)."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from stabilizer.client.dial import Attempt, DialOptions, dial
from stabilizer.client.inbox import Inbox
from stabilizer.errors import WireError
from stabilizer.pure.client_protocol import (
    ClientClosedError,
    CloseAction,
    ConnectionState,
    ControlFrame,
    HandshakeRejectedError,
    Positions,
    ResumeResult,
    RetriesExhaustedError,
    RetryPolicy,
    SendTimeoutError,
    ServerClosedError,
    SessionInfo,
    StateChange,
    build_url,
    close_action,
    code_name,
    control_frame,
    retry_delay,
    unwrap,
    url_source,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _notify(callback: Callable[[T], object] | None, value: T) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # the application's bug must not end the connection
        logger.error("stabilizer client callback %r failed", callback, exc_info=True)


class ClientConnection:
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
    ) -> None:
        self._urls = url_source(url, client_id)
        self._client_id = client_id
        self._token = token
        self._retry = retry or RetryPolicy()
        self._send_timeout = send_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._dial_options = DialOptions(open_timeout, close_timeout, max_message_size,
                                         dict(headers or {}))
        self._welcome = welcome
        self._on_state, self._on_control, self._on_resume = on_state, on_control, on_resume
        self.state = ConnectionState.CONNECTING
        self.session: SessionInfo | None = None
        self.last_resume: ResumeResult | None = None
        self._positions = Positions()
        self._history = False
        self._inbox = Inbox(max_inbox_messages)
        self._state_changed = asyncio.Condition()
        self._ws: WebSocket | None = None
        self._ever_opened = False
        self._error: ClientClosedError | None = None
        self._closed_by_app = False
        self._runner: asyncio.Task[None] | None = None

    @property
    def client_id(self) -> str | None:
        """The client id given to connect(), else the one in the last session frame."""
        return self._client_id or (self.session.client_id if self.session else None)

    @property
    def node_id(self) -> str | None:
        """The replica serving the current (or last) connection."""
        return self.session.node_id if self.session else None

    @property
    def token(self) -> str | None:
        """The newest reconnect token (persist it to resume from another process)."""
        return self._token

    @property
    def positions(self) -> dict[str, tuple[int, str]]:
        """Per stream, the ``(offset, epoch)`` of the last message handed over."""
        return self._positions.snapshot()

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
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        await self._finish(ClientClosedError("the application closed this connection"),
                           by_app=True)

    async def send(self, message: str | bytes, *, timeout: float | None = None) -> None:
        """Send one message, waiting while reconnecting (up to `timeout`, else send_timeout).

        Raises:
            SendTimeoutError: no connection opened, or the send did not finish, in time.
            ClientClosedError: the connection is closed for good (the subclass says why).
        """
        if not isinstance(message, str | bytes):
            raise TypeError(f"send() takes str or bytes, got {type(message).__name__}")
        if self._runner is None and self._error is None:
            raise RuntimeError("start the connection first (async with connect(...))")
        limit = self._send_timeout if timeout is None else timeout
        stale: WebSocket | None = None
        writing = False
        try:
            async with asyncio.timeout(limit):
                while True:
                    ws = await self._wait_open(stale)
                    try:
                        writing = True
                        await ws.send(message)
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
        """Return the next application message, waiting through reconnects.

        Raises:
            ClientClosedError: closed for good and every received message was returned.
        """
        if self._runner is None and self._error is None:
            raise RuntimeError("start the connection first (async with connect(...))")
        message = await self._inbox.get(lambda: self._error is not None)
        if message is None:
            raise self._closed_error()
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
                failures = 0 if attempt.stable else failures + 1
                delay = await self._plan(attempt, unopened, failures)
        except ClientClosedError as exc:
            await self._finish(exc)
        except Exception as exc:  # a bug: end the client loudly rather than hang its users
            logger.error("stabilizer client failed", exc_info=True)
            await self._finish(ClientClosedError(f"client failed unexpectedly: {exc!r}"))

    async def _plan(self, attempt: Attempt, unopened: int, failures: int) -> float:
        """Return the delay before the next attempt; raise when there is none."""
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
        if action is CloseAction.RETRY_WITHOUT_TOKEN:
            logger.info("token refused (%s); reconnecting with a fresh session", code)
            self._token, delay = None, 0.0
        else:
            delay = retry_delay(self._retry, failures, code, reason)
        state = ConnectionState.RECONNECTING if self._ever_opened else ConnectionState.CONNECTING
        await self._set_state(StateChange(state, failures=failures, delay=delay, close_code=code,
                                          close_reason=reason, url=attempt.url))
        return delay

    async def _attempt(self) -> Attempt:
        """Open one socket and serve it until it closes; report how it ended."""
        attempt = Attempt(url=self._urls(), used_token=self._token is not None)
        positions = self._positions.encode() if self._token is not None else None
        ws = await dial(attempt, build_url(attempt.url, token=self._token, positions=positions),
                        self._dial_options)
        if ws is None:
            return attempt
        try:
            await self._serve(ws, attempt)
        finally:
            await self._drop(ws)
        return attempt

    async def _serve(self, ws: WebSocket, attempt: Attempt) -> None:
        loop = asyncio.get_running_loop()
        opened_at = math.inf
        try:
            if self._welcome:
                async with asyncio.timeout(self._open_timeout):
                    first = await ws.recv()
                await self._handle(ws, first)  # the session frame: token, node id
            await self._open(ws, attempt)
            opened_at = loop.time()
            while True:
                await self._handle(ws, await ws.recv())
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                attempt.code, attempt.reason = exc.rcvd.code, exc.rcvd.reason
            else:
                attempt.reason = "connection lost without a close frame"
        except TimeoutError:
            attempt.reason = "no session frame in time" if not attempt.opened else (
                "could not write a pong in time")
        finally:
            attempt.stable = loop.time() - opened_at >= self._retry.stable_after
            async with self._state_changed:
                if self._ws is ws:
                    self._ws = None
                    self._state_changed.notify_all()
        if attempt.opened:
            logger.info("stabilizer connection to %s closed: %d %s", self.node_id,
                        attempt.code, attempt.reason)

    async def _drop(self, ws: WebSocket) -> None:
        try:
            async with asyncio.timeout(self._close_timeout):
                await ws.close()
        except (TimeoutError, OSError):
            ws.transport.abort()

    async def _open(self, ws: WebSocket, attempt: Attempt) -> None:
        reconnect = self._ever_opened
        attempt.opened = self._ever_opened = True
        async with self._state_changed:
            self._ws = ws
            self._state_changed.notify_all()
        logger.info("stabilizer connection open on node %s", self.node_id)
        await self._set_state(StateChange(ConnectionState.OPEN, url=attempt.url))
        session = self.session
        if reconnect and not (session is not None and session.resumed and self._history):
            # no resume frame will come: tell the application what it missed
            self._resumed(ResumeResult(recovered=False, session_resumed=bool(
                session is not None and session.resumed)))

    async def _handle(self, ws: WebSocket, raw: str | bytes) -> None:
        frame = control_frame(raw, history=self._history) if isinstance(raw, str) else None
        if frame is None:
            await self._deliver(raw)
            return
        kind = frame["type"]
        if kind == "message":
            try:
                wrapped = unwrap(frame)
            except WireError as exc:
                logger.warning("dropping a message frame: %s", exc)
                return
            if wrapped.offset is None or wrapped.epoch is None or self._positions.accept(
                wrapped.stream, wrapped.offset, wrapped.epoch
            ):
                await self._deliver(wrapped.payload)
            return
        _notify(self._on_control, frame)
        if kind == "ping":
            async with asyncio.timeout(self._send_timeout):
                await ws.send("pong")
        elif kind == "session":
            self._on_session(SessionInfo.from_frame(frame))
        elif kind == "resume":
            failed = frame.get("failed")
            replayed = frame.get("replayed")
            self._resumed(ResumeResult(
                recovered=frame.get("recovered") is True,
                replayed=replayed if type(replayed) is int else 0,
                failed=tuple(str(s) for s in failed) if isinstance(failed, list) else ()))
        elif kind == "error":
            logger.warning("server dropped a message: %s", frame.get("code"))

    def _on_session(self, info: SessionInfo) -> None:
        if self._client_id is not None and info.client_id != self._client_id:
            raise HandshakeRejectedError(
                f"server opened a session for client {info.client_id!r}, expected "
                f"{self._client_id!r}; check the URL")
        self.session, self._token, self._history = info, info.token, info.history

    def _resumed(self, result: ResumeResult) -> None:
        self.last_resume = result
        _notify(self._on_resume, result)

    async def _deliver(self, message: str | bytes) -> None:
        # a slow application stops the reading here; the server ends up closing the
        # socket (4000/1013) and the client reconnects, keeping what it buffered
        await self._inbox.put(message)

    async def _set_state(self, change: StateChange) -> None:
        async with self._state_changed:
            self.state = change.state
            self._state_changed.notify_all()
        _notify(self._on_state, change)

    async def _finish(self, error: ClientClosedError, *, by_app: bool = False) -> None:
        if self._error is not None:
            return
        self._error, self._closed_by_app = error, by_app
        await self._inbox.wake()
        if not by_app:
            logger.info("stabilizer client closed for good: %s", error)
        await self._set_state(StateChange(ConnectionState.CLOSED, close_code=error.code,
                                          close_reason=error.reason,
                                          error=None if by_app else error))
