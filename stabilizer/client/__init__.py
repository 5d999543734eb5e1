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

from collections.abc import Callable, Mapping, Sequence

from stabilizer.client.connection import ClientConnection
from stabilizer.pure.client_protocol import (
    ClientClosedError,
    ClientError,
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
    Wrapped,
    build_url,
    close_action,
    control_frame,
    retry_advice_seconds,
    retry_delay,
    unwrap,
)

__all__ = [
    "ClientClosedError",
    "ClientConnection",
    "ClientError",
    "CloseAction",
    "ConnectionState",
    "HandshakeRejectedError",
    "Positions",
    "ResumeResult",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SendTimeoutError",
    "ServerClosedError",
    "SessionInfo",
    "StateChange",
    "Wrapped",
    "build_url",
    "close_action",
    "connect",
    "control_frame",
    "retry_advice_seconds",
    "retry_delay",
    "unwrap",
]


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
    on_control: Callable[[ControlFrame], object] | None = None,
    on_resume: Callable[[ResumeResult], object] | None = None,
) -> ClientConnection:
    """Return an unstarted ClientConnection; ``async with`` (or ``await start()``) opens it.

    `url` is a ws:// URL, a list tried in turn (failover), or a callable returning the URL
    for each attempt. ``{client_id}`` in a given URL is replaced by the quoted `client_id`;
    a session frame for another client id then ends the client (HandshakeRejectedError).
    `token` resumes a session saved from an earlier process.
    """
    return ClientConnection(
        url, client_id=client_id, token=token, retry=retry, send_timeout=send_timeout,
        open_timeout=open_timeout, close_timeout=close_timeout,
        max_inbox_messages=max_inbox_messages, max_message_size=max_message_size,
        welcome=welcome, headers=headers, on_state=on_state, on_control=on_control,
        on_resume=on_resume)
