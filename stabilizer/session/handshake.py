"""The handshake of a session: which protocol, who the client is, what it resumes.

Plain clients (no subprotocol) bring their client id in the URL and a reconnect token and
positions in the query; v2 clients send a ``connect`` frame first. Either may be
authenticated by the node's authenticator, or by the application before the session starts
(an ``identity`` it passes in, e.g. from a FastAPI dependency).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from stabilizer.auth.identity import Credentials, Identity
from stabilizer.connection.sockets import accept_if_needed, offers_subprotocol
from stabilizer.node.context import NodeContext
from stabilizer.pure.frames import utf8_size_over
from stabilizer.pure.positions import Positions, parse_positions
from stabilizer.pure.tokens import claimed_client_id
from stabilizer.pure.users import client_id_of, is_device, new_device
from stabilizer.pure.v2 import (
    SUBPROTOCOL,
    ConnectRequest,
    FrameTooBigError,
    ProtocolError,
    parse_connect,
)
from stabilizer.services.auth import Auth


class ClientGone(Exception):
    """The client closed its socket before the handshake ended."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"client left during the handshake (close {code})")
        self.code = code


@dataclass(frozen=True, slots=True)
class Greeting:
    """The outcome of a handshake."""

    client_id: str
    protocol: int
    identity: Identity | None = None
    token: str | None = None
    positions: Positions = field(default_factory=dict)
    device: str | None = None
    channels: frozenset[str] = frozenset()  # (v2) what a resuming client says it holds


@dataclass(frozen=True, slots=True)
class Asked:
    """What the application and the URL said about the client before the handshake."""

    client_id: str | None
    token: str | None = None
    positions: str | None = None
    identity: Identity | None = None


async def greet(ctx: NodeContext, auth: Auth, websocket: Any, asked: Asked) -> Greeting:
    """Run the handshake: accept (choosing v2 when the client offers it), read a v2
    client's connect frame, authenticate, and name the client.

    Raises:
        ProtocolError: a missing or malformed connect frame, or bad positions.
        AuthenticationError, CredentialsExpiredError: refused credentials.
        BackendUnavailable: the authenticator did not answer in time, or could not check
            the credentials now (AuthUnavailable).
        ClientGone: the client left meanwhile.
    """
    if not offers_subprotocol(websocket, SUBPROTOCOL):
        identity = asked.identity
        if identity is None and auth.enabled:
            identity = await auth.authenticate(Credentials(None, websocket))
        positions = parse_positions(asked.positions) if asked.token else {}
        device = None if asked.client_id is not None else (
            _device_in(asked.token, identity) or new_device())
        return Greeting(_name(asked.client_id, identity, device), 1, identity, asked.token,
                        positions, device)
    await accept_if_needed(websocket, SUBPROTOCOL)
    request = await read_connect(websocket, ctx.config.connect_timeout,
                                 ctx.config.max_message_size)
    identity = asked.identity or await auth.authenticate(
        Credentials(request.token, websocket, request.params))
    device = request.device or new_device()
    resuming = request.reconnect_token is not None
    return Greeting(_name(asked.client_id, identity, device), 2, identity,
                    request.reconnect_token, request.positions if resuming else {}, device,
                    request.channels if resuming else frozenset())


def _device_in(token: str | None, identity: Identity | None) -> str | None:
    """The device of the client a plain client's reconnect token names, when that client is
    one of `identity`'s (anonymous: a bare device): a plain client that names no client id
    has no other way to say which device it is. (The token is verified, and checked against
    the client, when it is spent.)"""
    claimed = claimed_client_id(token) if token else None
    if claimed is None:
        return None
    if identity is not None:
        prefix = client_id_of(identity.user_id, "")
        if not claimed.startswith(prefix):
            return None
        claimed = claimed[len(prefix):]
    return claimed if is_device(claimed) else None


def _name(client_id: str | None, identity: Identity | None, device: str | None) -> str:
    if client_id is not None:
        return client_id
    assert device is not None
    return client_id_of(identity.user_id if identity is not None else None, device)


async def read_connect(websocket: Any, timeout: float, max_size: int) -> ConnectRequest:
    """Wait for a v2 client's first frame and decode it.

    Raises:
        FrameTooBigError: it is over `max_size` bytes.
        ProtocolError: none came within `timeout`, or it is not a valid connect frame.
        ClientGone: the client closed first.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await websocket.receive()
                kind = event.get("type")
                if kind == "websocket.disconnect":
                    raise ClientGone(event.get("code"))
                if kind != "websocket.receive":
                    continue
                text = event.get("text")
                if not isinstance(text, str):
                    raise ProtocolError("the connect frame must be a text frame")
                if utf8_size_over(text, max_size):
                    raise FrameTooBigError(f"the connect frame is over {max_size} bytes")
                return parse_connect(text)
    except TimeoutError:
        raise ProtocolError(f"no connect frame within {timeout:g}s") from None
