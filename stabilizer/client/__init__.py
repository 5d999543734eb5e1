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
  pong, resume, error; with v2 also refresh, refreshed): ``on_control`` sees each of them,
  ``conn.session`` is the newest session frame (``conn.node_id``, ``conn.token``);
- reconnects when the close code allows it (protocol section 5): after the server's
  ``{"retry_ms": N}`` advice for 1012/1013, else after capped full-jitter backoff
  (``RetryPolicy``). With several URLs, each attempt uses the next one (failover);
- resumes with the newest reconnect token, and with history sends ``positions``, drops
  duplicates and unwraps ``data``/``data_b64``; after 4501/4502 it retries once without the
  token (a fresh session). (Protocol 1 puts positions in the URL only while its path and
  query stay within 6 KiB, as servers read handshake lines of 8 KiB; beyond, the token
  alone resumes, the server replays from the session's start and the client drops what
  it had);
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
failed attempts in a row) and HandshakeRejectedError; a message from the server over
``max_message_size`` ends the client too (ClientClosedError, ``code`` 1009: the client
closed with it, and a resume would replay that message). ``send`` raises SendTimeoutError when
no connection opens within its timeout: a message is sent or an exception says why.
Messages received before the end are still returned first. Callbacks run in the client's
task: keep them short (``queue.put_nowait`` is ideal). They are plain functions: the
client never awaits them, so an ``async def`` callback (``on_state``, ``on_control``,
``on_resume``; a subscription's ``on_message``, ``on_presence``, ``on_unsubscribed``; a
presence's ``on_change``) is refused with TypeError where it is given; to await
something, start a task from a plain one (``get_token``, which the client awaits, may be
async).

``max_inbox_messages`` bounds the messages received and not yet returned, always. The
client reads its socket whatever the application does, so pings are answered, a close or a
lost socket shows in ``conn.state`` at once, and a request's reply (v2: rpc, subscribe,
unsubscribe, publish) arrives even while the inbox is full. An application message that
finds the inbox full is turned away, and so is every later one of that socket (none is
acknowledged, no position recorded; callbacks of subscriptions still get theirs). Once the
application has drained the inbox to half (``max_inbox_messages // 2`` messages or fewer
wait) and no request waits for its reply on that socket, the client closes it (1013, "the
application fell behind") and reconnects at once, resuming after the last message it
kept: with history the server replays the rest (``on_resume``, ``recovered`` true);
without, they are lost and ``on_resume`` says so (``recovered`` false), as after any
reconnect without history. Such a resume is no failure (``StateChange.failures`` stays,
``delay`` is 0), and each admits half an inbox at least, so a burst of N messages costs
about N / (max_inbox_messages / 2) resumes, and every resume replays what is left of it;
one whose socket delivered no message at all counts as a failure and backs off. A message
the server sent without a position (unsequenced) cannot be replayed: its stream is listed
in ``failed``. Size the inbox for the bursts the application must absorb without a
resume.

Caveat: without history, an application message that is a JSON object whose "type" is a
control type (session, ping, pong, resume, error) cannot be told from a control frame and
is consumed as one; applications should not send such objects. Protocol v2 has no such
caveat.

Protocol v2 (docs/protocol.md, section 6) is opt-in::

    async with connect("wss://host/ws", protocol=2, get_token=fetch_jwt) as conn:
        print(conn.user_id, conn.device, conn.client_id, conn.expires_at)

It offers the subprotocol ``stabilizer.v2`` and fails with HandshakeRejectedError when the
server does not choose it (it never falls back to plain). ``get_token`` (sync or async,
returning a str or None; bounded by ``open_timeout``) is called before every connect and
reconnect and whenever the server sends ``refresh``; its token, the reconnect token and
the positions travel in the ``connect`` frame, never in the URL. A get_token that raises
fails that attempt (the next one asks again); one that fails on refresh sends nothing, so
the server closes with 4003 when the credentials expire and the client reconnects with a
new token. ``device`` is sent on every connect: the given one, else the one the server
chose in the first session frame, so a reconnect resumes the same client
(``<user_id>/<device>``). ``params`` goes to the server's authenticator. Close codes: 4003
(credentials expired) reconnects, asking get_token again; 4004 (too many connections of
the user) reconnects after the retry advice; 4505 (credentials refused) is final
(ServerClosedError). To resume from another process, keep ``conn.token``,
``conn.device`` and ``conn.positions`` and pass them back.

``await conn.rpc(method, params, timeout=30.0)`` (v2) calls a procedure the server
registered with ``@manager.rpc(method)`` and returns its result, or raises RPCError: the
server's code, or ``timeout`` / ``disconnected`` (the call may have run; it is never sent
twice). A call made while reconnecting is sent once the connection is open. A frame over
the ``max_message_size`` the server's session frame stated (an rpc, subscribe, publish or
``send``) would make the server close with 1009, final: the client raises ValueError
instead and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from stabilizer.client.connection import ClientConnection
from stabilizer.client.v2 import TokenSource
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
    SendTimeoutError,
    ServerClosedError,
    SessionInfo,
    StateChange,
    Wrapped,
    build_url,
    close_action,
    control_frame,
    unwrap,
)
from stabilizer.pure.client_retry import RetryPolicy, retry_advice_seconds, retry_delay
from stabilizer.pure.text import JSONValue

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
    "TokenSource",
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
    protocol: int = 1,
    get_token: TokenSource | None = None,
    device: str | None = None,
    params: Mapping[str, JSONValue] | None = None,
    positions: Mapping[str, tuple[int, str]] | None = None,
) -> ClientConnection:
    """Return an unstarted ClientConnection; ``async with`` (or ``await start()``) opens it.

    `url` is a ws:// URL, a list tried in turn (failover), or a callable returning the URL
    for each attempt. ``{client_id}`` in a given URL is replaced by the quoted `client_id`;
    a session frame for another client id then ends the client (HandshakeRejectedError).
    `token` resumes a session saved from an earlier process, from `positions` (what that
    process's ``conn.positions`` held: without them, what it handled is replayed again).

    ``protocol=2`` speaks protocol v2: `get_token` supplies the access token on every
    connect, reconnect and refresh, `device` names this client instance (default: the one
    the server picks, kept across reconnects), `params` goes to the authenticator.

    Raises:
        ConfigError: a bad URL, or v2 options that do not fit (``get_token`` without
            ``protocol=2``, an invalid device).
        TypeError: an ``async def`` on_state, on_control or on_resume (callbacks are
            plain functions: the client never awaits them).
    """
    return ClientConnection(
        url, client_id=client_id, token=token, retry=retry, send_timeout=send_timeout,
        open_timeout=open_timeout, close_timeout=close_timeout,
        max_inbox_messages=max_inbox_messages, max_message_size=max_message_size,
        welcome=welcome, headers=headers, on_state=on_state, on_control=on_control,
        on_resume=on_resume, protocol=protocol, get_token=get_token, device=device,
        params=params, positions=positions)
