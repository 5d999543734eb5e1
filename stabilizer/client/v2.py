"""Protocol v2 for the Python client (docs/protocol.md, section 6): the credentials it
presents through ``get_token``, its device, the connect frame that follows the handshake,
and the answer to the server's ``refresh`` requests.

One ProtocolV2 lives as long as its ClientConnection; the refresh task it starts belongs to
the socket it answers on, and ``stop()`` (called when that socket is done) ends it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from stabilizer.errors import ConfigError
from stabilizer.pure.client_protocol import (
    ClientClosedError,
    ControlFrame,
    SessionInfo,
    finite_number,
)
from stabilizer.pure.client_v2 import (
    ADVISED_CLOSES,
    check_size,
    checked_token,
    connect_frame,
    refresh_frame,
    require_v2,
)
from stabilizer.pure.text import JSONValue
from stabilizer.pure.users import is_device
from stabilizer.pure.v2 import SUBPROTOCOL

__all__ = ["SUBPROTOCOL", "ProtocolV2", "TokenSource", "check_options"]

logger = logging.getLogger(__name__)

#: A callable returning the access token (or None), directly or as an awaitable.
TokenSource = Callable[[], str | Awaitable[str | None] | None]


def check_options(protocol: int, *, get_token: object, device: str | None,
                  params: object, welcome: bool) -> None:
    """Refuse options that do not fit together, before any attempt.

    Raises:
        ConfigError: an unknown protocol, v2 options without ``protocol=2``, a bad device.
    """
    if isinstance(protocol, bool) or protocol not in (1, 2):
        raise ConfigError(f"protocol must be 1 (plain) or 2 (stabilizer.v2), got {protocol!r}")
    if protocol == 1:
        given = [name for name, value in (("get_token", get_token), ("device", device),
                                          ("params", params)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need protocol=2 (a plain client sends "
                              "credentials in headers: headers={'Authorization': ...})")
        return
    if get_token is not None and not callable(get_token):
        raise ConfigError("get_token must be a callable returning a token (str) or None")
    if device is not None and not is_device(device):
        raise ConfigError(f"device must be 1-64 characters of A-Z a-z 0-9 . _ ~ -, "
                          f"got {device!r}")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError("params must be a mapping (a JSON object)")
    if not welcome:
        raise ConfigError("welcome=False is for plain servers: a v2 session always starts "
                          "with a session frame")


class ProtocolV2:
    """What a v2 client presents and remembers across its sockets: token, device, expiry."""

    def __init__(self, get_token: TokenSource | None, *, device: str | None,
                 params: Mapping[str, JSONValue] | None, timeout: float) -> None:
        self._get_token = get_token
        self._params = dict(params) if params else None
        self._timeout = timeout
        self.device = device
        self.expires_at: float | None = None
        # the server's limit on a frame it reads, from its last session frame (None: an
        # older server, which does not say): a resuming connect frame stays under it
        self.max_message_size: int | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def token(self) -> str | None:
        """Call get_token (sync or async) once, bounded by the open timeout.

        Raises:
            ClientClosedError: get_token returned something other than a str or None.
            Exception: whatever get_token raised (TimeoutError when it took too long).
        """
        if self._get_token is None:
            return None
        async with asyncio.timeout(self._timeout):
            value = self._get_token()
            if inspect.isawaitable(value):
                value = await value
        try:
            return checked_token(value)
        except TypeError as exc:
            raise ClientClosedError(str(exc)) from exc

    async def greet(self, ws: WebSocket, url: str, *, token: str | None,
                    reconnect_token: str | None,
                    positions: Mapping[str, tuple[int, str]] | None,
                    channels: Sequence[str] = ()) -> None:
        """Check that the server chose v2, then send the connect frame (resuming, it names
        the `channels` the client holds: the server tells it of those it left meanwhile;
        it fits the max_message_size the last session frame stated).

        Raises:
            HandshakeRejectedError: the server does not speak v2.
            ConnectionClosed, TimeoutError: the socket went away meanwhile, or the server
                chose no subprotocol only to refuse the socket with retry advice.
        """
        if ws.subprotocol != SUBPROTOCOL:
            await self._refused_with_advice(ws)
        require_v2(ws.subprotocol, url)
        frame = connect_frame(token=token, device=self.device, reconnect_token=reconnect_token,
                              positions=positions, params=self._params, channels=channels,
                              max_size=self.max_message_size)
        async with asyncio.timeout(self._timeout):
            await ws.send(frame)

    async def _refused_with_advice(self, ws: WebSocket) -> None:
        """Raise the close of a socket the server accepted without v2 only to refuse it with
        retry advice (an older server that drains does): the client follows the advice
        rather than give up on a server that speaks v2. Return when the server sends a
        frame, closes otherwise or stays silent for the open timeout: it does not speak v2.
        """
        try:
            async with asyncio.timeout(self._timeout):
                await ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code in ADVISED_CLOSES:
                raise
        except TimeoutError:
            pass

    def on_session(self, info: SessionInfo) -> None:
        """Keep the device the server uses (sent again on reconnect), the expiry, and the
        server's limit on a frame."""
        self.device = info.device or self.device
        self.expires_at = info.expires_at
        self.max_message_size = info.max_message_size

    def check_size(self, frame: str | bytes) -> None:
        """Refuse a frame over the max_message_size of the last session frame.

        Raises:
            ValueError: it is over it.
        """
        check_size(frame, self.max_message_size)

    def on_refreshed(self, frame: ControlFrame) -> None:
        """The server accepted fresh credentials."""
        # (null: they do not expire; what is no finite float, 10**400 say, is taken as null)
        self.expires_at = finite_number(frame.get("expires_at"))

    def ask(self, ws: WebSocket) -> None:
        """Answer a ``refresh`` request in the background: reading goes on meanwhile."""
        if self._refresher is not None and not self._refresher.done():
            return  # one answer is on its way already
        self._refresher = asyncio.create_task(self._refresh(ws), name="stabilizer-refresh")

    async def stop(self) -> None:
        """End a refresh still running for a socket that is done."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.wait([refresher])

    async def _refresh(self, ws: WebSocket) -> None:
        try:
            token = await self.token()
        except Exception:  # nothing sent: the server closes with 4003, the reconnect retries
            logger.warning("get_token failed while refreshing credentials", exc_info=True)
            return
        if token is None:
            logger.warning("get_token returned no token to refresh the credentials with")
            return
        try:
            async with asyncio.timeout(self._timeout):
                await ws.send(refresh_frame(token))
        except (ConnectionClosed, TimeoutError):
            logger.info("the socket closed before the refreshed credentials were sent")
