"""What the client does with each frame a server sends, and what it learns from them: the
session, the newest reconnect token, history positions, and (v2) device and expiry."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Final

from websockets.asyncio.client import ClientConnection as WebSocket

from stabilizer.client.acks import Acks, send_ack
from stabilizer.client.callbacks import notify
from stabilizer.client.calls import PendingCalls
from stabilizer.client.inbox import Inbox
from stabilizer.client.requests import Subscriptions
from stabilizer.client.v2 import ProtocolV2
from stabilizer.errors import WireError
from stabilizer.pure.client_acks import Place
from stabilizer.pure.client_protocol import (
    ControlFrame,
    HandshakeRejectedError,
    Positions,
    ResumeResult,
    SessionInfo,
    control_frame,
    message_payload,
    unwrap,
)
from stabilizer.pure.client_v2 import malformed, v2_frame
from stabilizer.pure.streams import group_stream
from stabilizer.pure.text import JSONValue

logger = logging.getLogger(__name__)

#: What acting on a server's frame raises when one of its values is of a shape no check
#: foresaw (an integer too large for a float, say): that frame is dropped and logged. Any
#: other exception, or HandshakeRejectedError, a closed socket or a timeout, ends the socket
#: or the client as before.
UNUSABLE: Final = (ArithmeticError, LookupError, RecursionError, TypeError, ValueError)


class Frames:
    """Sorts a server's frames into control frames (handled here) and application messages
    (into the inbox), and keeps what the control frames said."""

    def __init__(self, inbox: Inbox, *, client_id: str | None, token: str | None,
                 v2: ProtocolV2 | None, send_timeout: float,
                 on_control: Callable[[ControlFrame], object] | None,
                 on_resume: Callable[[ResumeResult], object] | None,
                 calls: PendingCalls | None = None,
                 subscriptions: Subscriptions | None = None) -> None:
        self._inbox = inbox
        self.acks = Acks(send_timeout)  # what the application's messages owe
        self._calls = calls
        self._subscriptions = subscriptions
        self._client_id = client_id
        self._v2 = v2
        self._send_timeout = send_timeout
        self._on_control, self._on_resume = on_control, on_resume
        self.token = token
        self.session: SessionInfo | None = None
        self.last_resume: ResumeResult | None = None
        self.positions = Positions()
        self.history = False
        self._unreplayable: set[str] = set()  # streams whose messages were turned away
        # the resume frame of a reconnect came: called with whether the session was kept
        self.on_resumed: Callable[[bool], None] | None = None
        self._resuming = False  # a reconnect's resume frame is due

    async def handle(self, ws: WebSocket, raw: str | bytes) -> None:
        """Act on one frame from `ws`: answer, remember, or deliver it.

        Raises:
            HandshakeRejectedError: a session frame for another client id than the given one.
        """
        if isinstance(raw, bytes):
            await self._deliver(raw)
            return
        v2 = self._v2
        frame = control_frame(raw, history=self.history) if v2 is None else v2_frame(raw)
        if frame is None:
            if v2 is None:
                await self._deliver(raw)
            else:
                logger.warning("dropping a text frame that is not a v2 frame")
            return
        problem = malformed(frame)
        if problem is not None:
            logger.warning("dropping %s", problem)
            return
        kind = frame["type"]
        try:
            await self._act(ws, kind, frame)
        except UNUSABLE:  # a field no check foresaw: the frame is lost, not the connection
            logger.error("dropping a %r frame the client could not act on", kind,
                         exc_info=True)

    async def _act(self, ws: WebSocket, kind: JSONValue, frame: ControlFrame) -> None:
        """Act on one well-formed frame of type `kind`."""
        v2 = self._v2
        if kind == "message":
            await self._message(ws, frame)
            return
        notify(self._on_control, frame)
        if kind == "ping":
            async with asyncio.timeout(self._send_timeout):
                await ws.send("pong" if v2 is None else '{"type":"pong"}')
        elif kind == "session":
            self._on_session(SessionInfo.from_frame(frame))
        elif kind == "resume":  # (its fields were checked: malformed)
            reconnect, self._resuming = self._resuming, False
            if reconnect:  # (its replay is over: it brought again the tokens it could)
                self.acks.owed.replayed(ws)
            self.resumed(ResumeResult(
                recovered=frame["recovered"] is True,
                session_resumed=frame.get("fresh") is not True,
                replayed=frame["replayed"], failed=tuple(frame["failed"])))
            if reconnect and self.on_resumed is not None:
                self.on_resumed(frame.get("fresh") is not True)
        elif kind == "error":
            logger.warning("server dropped a frame: %s", frame.get("code"))
        elif v2 is not None and kind == "refresh":
            v2.ask(ws)
        elif v2 is not None and kind == "refreshed":
            v2.on_refreshed(frame)
        elif v2 is not None and kind == "reply" and self._calls is not None:
            self._calls.settle(frame)
        elif (v2 is not None and kind in ("presence_state", "presence_diff")
              and self._subscriptions is not None):
            await self._subscriptions.presence_frame(frame)
        elif v2 is not None and kind == "unsubscribed" and self._subscriptions is not None:
            # (its messages, if any more came, start afresh)
            self.positions.forget(group_stream(frame["channel"]))
            self._subscriptions.ended(frame)

    def resume_positions(self) -> dict[str, tuple[int, str]]:
        """The positions a resume sends: the recorded ones, but before any message whose
        acknowledgement is still owed, so that its token comes on the new socket
        (pure/client_acks.py)."""
        return self.acks.owed.resume_from(self.positions.to_resume())

    def reopened(self, ws: WebSocket) -> bool:
        """After a reconnect onto `ws`: whether a resume frame will come (the session
        resumed with history); when none will, say what was missed."""
        session = self.session
        self._resuming = session is not None and session.resumed and self.history
        if not self._resuming:
            self.acks.owed.replayed(ws)  # nothing is replayed
            self.resumed(ResumeResult(recovered=False, session_resumed=bool(
                session is not None and session.resumed)))
        return self._resuming

    def resumed(self, result: ResumeResult) -> None:
        """Record a reconnect's outcome and tell the application (streams whose messages
        a full inbox turned away without a position to replay them from count as failed)."""
        if self._unreplayable:
            failed = tuple(dict.fromkeys((*result.failed, *sorted(self._unreplayable))))
            result = dataclasses.replace(result, recovered=False, failed=failed)
            self._unreplayable.clear()
        self.last_resume = result
        notify(self._on_resume, result)

    async def _message(self, ws: WebSocket, frame: ControlFrame) -> None:
        token = frame.get("ack")  # (v2) acknowledge once the application handled it
        ack = (token, ws) if isinstance(token, str) and self._v2 is not None else None
        try:
            if not self.history:  # v2 without history: only the data (and its channel)
                channel = frame.get("channel")
                await self._deliver(message_payload(frame),
                                    channel if isinstance(channel, str) else None, ack)
                return
            wrapped = unwrap(frame)
        except WireError as exc:
            logger.warning("dropping a message frame: %s", exc)
            return
        stream, offset, epoch = wrapped.stream, wrapped.offset, wrapped.epoch
        if offset is not None and epoch is not None and self.positions.seen(
                stream, offset, epoch):
            if ack is not None:  # a duplicate: its token now belongs to this socket
                await self.acks.again(*ack)
            return
        channel = stream[2:] if stream.startswith("g:") else None
        place = None if offset is None or epoch is None else (stream, offset, epoch)
        kept = await self._deliver(wrapped.payload, channel, ack, place)
        if not kept:  # turned away by a full inbox: the resume replays it, if it can
            if offset is None or epoch is None:
                self._unreplayable.add(stream)
        elif offset is not None and epoch is not None and (
                channel is None or self._subscriptions is None
                or self._subscriptions.records(channel)):
            self.positions.accept(stream, offset, epoch)

    def _on_session(self, info: SessionInfo) -> None:
        if self._client_id is not None and info.client_id != self._client_id:
            raise HandshakeRejectedError(
                f"server opened a session for client {info.client_id!r}, expected "
                f"{self._client_id!r}; check the URL")
        self.session, self.token, self.history = info, info.token, info.history
        if self._v2 is not None:
            self._v2.on_session(info)

    async def _deliver(self, message: str | bytes, channel: str | None = None,
                       ack: tuple[str, WebSocket] | None = None,
                       place: Place | None = None) -> bool:
        """Hand a message over (with the token its `ack` carries, and the socket that
        brought it); False when a full inbox turned it away (client/inbox.py: the reader
        never waits for the application)."""
        if self._subscriptions is not None and self._subscriptions.route(channel, message):
            if ack is not None:  # its subscription's on_message handled it
                await send_ack(ack[1], ack[0], self._send_timeout)
            return True
        kept = self._inbox.offer(message, None if ack is None else ack[0])
        if kept and ack is not None:  # (unacknowledged when turned away)
            self.acks.owe(*ack, place)
        return kept
