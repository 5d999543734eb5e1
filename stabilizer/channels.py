"""What the application's channel hooks see of a v2 client's ``subscribe`` and ``publish``
(docs/protocol.md 6.6). A channel is a group: subscribing joins it, publishing sends to it.

``@manager.on_subscribe``: return None (or True) to allow, False to refuse (``forbidden``),
or raise RPCError to refuse with a code, message and data of its own.
``@manager.on_publish``: return what to publish (the request's ``data`` as sent, or
something else to rewrite it), or raise RPCError (or return False) to refuse.
Without the hook, clients can neither subscribe nor publish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A client asks to join `channel`."""

    channel: str
    params: Any  # what the client sent along: any JSON value, None when it sent none
    client_id: str
    user_id: str | None
    conn_id: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A client asks to send `data` to every member of `channel`."""

    channel: str
    data: Any  # any JSON value (a string is sent as text)
    client_id: str
    user_id: str | None
    conn_id: str
    metadata: Mapping[str, Any]


SubscribeHook: TypeAlias = Callable[[SubscribeRequest], Awaitable[bool | None] | bool | None]
PublishHook: TypeAlias = Callable[[PublishRequest], Awaitable[Any] | Any]
