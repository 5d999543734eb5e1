"""Python client for stabilizer servers: pongs, reconnects, tokens and positions.

It speaks docs/protocol.md over the ``websockets`` library (extra ``client``)::

    from stabilizer.client import RetryPolicy, connect

    async with connect("ws://host/ws/{client_id}", client_id="alice",
                       retry=RetryPolicy(base=0.5, cap=30.0)) as conn:
        await conn.send("hello")            # waits while reconnecting, up to send_timeout
        async for message in conn:          # application messages only: str or bytes
            ...

What it does for you:

- answers ``ping`` frames with ``pong`` and never yields a control frame (session, ping,
  pong, resume, error): ``on_control`` sees each of them, ``conn.session`` is the newest
  session frame (``conn.node_id``, ``conn.token``);
- reconnects when the close code allows it (protocol section 5): after the server's
  ``{"retry_ms": N}`` advice for 1012/1013, else after capped full-jitter backoff
  (``RetryPolicy``). With several URLs, each attempt uses the next one (failover);
- resumes with the newest reconnect token, and with history sends ``positions``, drops
  duplicates and unwraps ``data``/``data_b64``; after 4501/4502 it retries once without the
  token (a fresh session);
- after every reconnect calls ``on_resume`` (also ``conn.last_resume``): ``recovered`` false
  means messages were missed (``failed`` streams, or no history, or ``session_resumed``
  false: the server forgot the session) and the application must resync.

States: ``conn.state``, and ``on_state(StateChange)`` at every change and every scheduled
retry::

    CONNECTING -> OPEN -> RECONNECTING -> OPEN -> ... -> CLOSED

CONNECTING until the first connection opens (``async with`` / ``start()`` return then);
RECONNECTING while a lost connection is re-established, one StateChange per scheduled
attempt with its ``delay`` and the ``close_code`` that caused it; CLOSED once, at the end.
A connection is open when its session frame arrives (``welcome=False``: at the handshake).

Ends: after ``aclose()`` iteration stops and ``recv`` raises ClientClosedError. A close code
that forbids reconnecting (1000, 1008, 1009, 4500-4999) raises ServerClosedError from
``start``, ``recv``, iteration and ``send``; so do RetriesExhaustedError (``max_attempts``
failed attempts in a row) and HandshakeRejectedError. ``send`` raises SendTimeoutError when
no connection opens within its timeout: a message is sent or an exception says why.
Messages received before the end are still returned first. Callbacks run in the client's
task: keep them short (``queue.put_nowait`` is ideal).

Caveat: without history, an application message that is a JSON object whose "type" is a
control type (session, ping, pong, resume, error) cannot be told from a control frame and
is consumed as one; applications should not send such objects.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as open_websocket
from websockets.exceptions import (
    ConnectionClosed,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from stabilizer.client_protocol import (
    _LOST,
    RETRYABLE_HTTP,
    ClientClosedError,
    ClientError,
    CloseAction,
    ConnectionState,
    Frame,
    HandshakeRejectedError,
    Positions,
    ResumeResult,
    RetriesExhaustedError,
    RetryPolicy,
    SendTimeoutError,
    ServerClosedError,
    SessionInfo,
    StateChange,
    Wrapped,
    build_url,
    close_action,
    control_frame,
    retry_advice_seconds,
    retry_delay,
    unwrap,
    url_source,
)
from stabilizer.config import CloseCode
from stabilizer.errors import WireError

__all__ = [
    "ClientClosedError", "ClientError", "CloseAction", "Connection", "ConnectionState",
    "HandshakeRejectedError", "Positions", "ResumeResult", "RetriesExhaustedError",
    "RetryPolicy", "SendTimeoutError", "ServerClosedError", "SessionInfo", "StateChange",
    "Wrapped", "build_url", "close_action", "connect", "control_frame", "retry_advice_seconds",
    "retry_delay", "unwrap",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _notify(callback: Callable[[T], object] | None, value: T) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # the application's bug must not end the connection
        logger.error("stabilizer client callback %r failed", callback, exc_info=True)


@dataclass(slots=True)
class _Attempt:
    url: str
    used_token: bool
    opened: bool = False
    stable: bool = False  # stayed open for RetryPolicy.stable_after seconds
    code: int = _LOST
    reason: str = ""


class Connection:
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
        on_control: Callable[[Frame], object] | None = None,
        on_resume: Callable[[ResumeResult], object] | None = None,
    ) -> None:
        self._urls = url_source(url, client_id)
        self._client_id = client_id
        self._token = token
        self._retry = retry or RetryPolicy()
        self._send_timeout = send_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_inbox = max_inbox_messages
        self._max_message_size = max_message_size
        self._welcome = welcome
        self._headers = dict(headers or {})
        self._on_state, self._on_control, self._on_resume = on_state, on_control, on_resume
        self.state = ConnectionState.CONNECTING
        self.session: SessionInfo | None = None
        self.last_resume: ResumeResult | None = None
        self._positions = Positions()
        self._history = False
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._inbox_changed = asyncio.Condition()
        self._state_changed = asyncio.Condition()
        self._ws: ClientConnection | None = None
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
        stale: ClientConnection | None = None
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
        async with self._inbox_changed:
            await self._inbox_changed.wait_for(
                lambda: bool(self._inbox) or self._error is not None)
            if self._inbox:
                message = self._inbox.popleft()
                self._inbox_changed.notify_all()
                return message
        raise self._closed_error()

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

    async def _wait_open(self, stale: ClientConnection | None) -> ClientConnection:
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

    async def _plan(self, attempt: _Attempt, unopened: int, failures: int) -> float:
        """Return the delay before the next attempt; raise when there is none."""
        code, reason = attempt.code, attempt.reason
        action = close_action(code, used_token=attempt.used_token)
        if action is CloseAction.STOP:
            raise ServerClosedError(f"server closed with {_code_name(code)}"
                                    f"{': ' + reason if reason else ''}; not reconnecting",
                                    code=code, reason=reason)
        limit = self._retry.max_attempts
        if limit is not None and unopened >= limit:
            raise RetriesExhaustedError(f"{unopened} attempts in a row failed; last: "
                                        f"{_code_name(code)} {reason}", code=code, reason=reason)
        if action is CloseAction.RETRY_WITHOUT_TOKEN:
            logger.info("token refused (%s); reconnecting with a fresh session", code)
            self._token, delay = None, 0.0
        else:
            delay = retry_delay(self._retry, failures, code, reason)
        state = ConnectionState.RECONNECTING if self._ever_opened else ConnectionState.CONNECTING
        await self._set_state(StateChange(state, failures=failures, delay=delay, close_code=code,
                                          close_reason=reason, url=attempt.url))
        return delay

    async def _attempt(self) -> _Attempt:
        """Open one socket and serve it until it closes; report how it ended."""
        attempt = _Attempt(url=self._urls(), used_token=self._token is not None)
        positions = self._positions.encode() if self._token is not None else None
        target = build_url(attempt.url, token=self._token, positions=positions)
        try:
            ws = await open_websocket(
                target, open_timeout=self._open_timeout, close_timeout=self._close_timeout,
                max_size=self._max_message_size, additional_headers=self._headers or None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status not in RETRYABLE_HTTP:
                raise HandshakeRejectedError(
                    f"{attempt.url} answered HTTP {status} to the upgrade; check the URL "
                    "and credentials", reason=f"HTTP {status}") from exc
            attempt.reason = f"HTTP {status}"
            return attempt
        except (InvalidURI, InvalidProxy) as exc:
            # str(exc) would repeat the full URL, token included: keep only the reason
            detail = getattr(exc, "msg", None) or type(exc).__name__
            raise HandshakeRejectedError(f"cannot connect to {attempt.url}: {detail}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            attempt.reason = f"connect failed: {exc.__class__.__name__}: {exc}"
            return attempt
        try:
            await self._serve(ws, attempt)
        finally:
            await self._drop(ws)
        return attempt

    async def _serve(self, ws: ClientConnection, attempt: _Attempt) -> None:
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

    async def _drop(self, ws: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._close_timeout):
                await ws.close()
        except (TimeoutError, OSError):
            ws.transport.abort()

    async def _open(self, ws: ClientConnection, attempt: _Attempt) -> None:
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

    async def _handle(self, ws: ClientConnection, raw: str | bytes) -> None:
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
        async with self._inbox_changed:
            # a slow application stops the reading here; the server ends up closing the
            # socket (4000/1013) and the client reconnects, keeping what it buffered
            await self._inbox_changed.wait_for(lambda: len(self._inbox) < self._max_inbox)
            self._inbox.append(message)
            self._inbox_changed.notify_all()

    async def _set_state(self, change: StateChange) -> None:
        async with self._state_changed:
            self.state = change.state
            self._state_changed.notify_all()
        _notify(self._on_state, change)

    async def _finish(self, error: ClientClosedError, *, by_app: bool = False) -> None:
        if self._error is not None:
            return
        self._error, self._closed_by_app = error, by_app
        async with self._inbox_changed:
            self._inbox_changed.notify_all()
        if not by_app:
            logger.info("stabilizer client closed for good: %s", error)
        await self._set_state(StateChange(ConnectionState.CLOSED, close_code=error.code,
                                          close_reason=error.reason,
                                          error=None if by_app else error))


def _code_name(code: int) -> str:
    try:
        return f"{code} ({CloseCode(code).name})"
    except ValueError:
        return str(code)


def connect(
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
    on_control: Callable[[Frame], object] | None = None,
    on_resume: Callable[[ResumeResult], object] | None = None,
) -> Connection:
    """Return an unstarted Connection; ``async with`` (or ``await start()``) opens it.

    `url` is a ws:// URL, a list tried in turn (failover), or a callable returning the URL
    for each attempt. ``{client_id}`` in a given URL is replaced by the quoted `client_id`;
    a session frame for another client id then ends the client (HandshakeRejectedError).
    `token` resumes a session saved from an earlier process.
    """
    return Connection(
        url, client_id=client_id, token=token, retry=retry, send_timeout=send_timeout,
        open_timeout=open_timeout, close_timeout=close_timeout,
        max_inbox_messages=max_inbox_messages, max_message_size=max_message_size,
        welcome=welcome, headers=headers, on_state=on_state, on_control=on_control,
        on_resume=on_resume)
