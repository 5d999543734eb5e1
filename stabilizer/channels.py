"""What the application's channel hooks see of a v2 client's ``subscribe`` and ``publish``
(docs/protocol.md 6.6). A channel is a group: subscribing joins it, publishing sends to it.

``@manager.on_subscribe``: return None (or True) to allow, False to refuse (``forbidden``),
or raise RPCError to refuse with a code, message and data of its own. Return a dict to
allow with presence metadata: the client joins the channel listed in its presence with
that dict (a JSON object of at most 1 KiB; see ``manager.get_presence``). Anything else
(0, "", [] or a string) is a mistake, not an allowance: the client is refused with
``internal`` and the error logged.
``SubscribeRequest.presence`` says whether the client asked to follow the channel's
presence (a ``presence_state`` frame, then ``presence_diff`` frames; docs/protocol.md 6.8).
``@manager.on_publish``: return what to publish (the request's ``data`` as sent, or
something else to rewrite it), or raise RPCError (or return False) to refuse.
Without the hook, clients can neither subscribe nor publish, except members publishing to
a channel whose namespace lets them (``WebSocketConfig.channel_namespaces``, which may also
refuse every client's publish, and turn a channel's presence or history off).
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
    presence: bool = False  # it asked to follow the channel's presence


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A client asks to send `data` to every member of `channel`."""

    channel: str
    data: Any  # any JSON value (a string is sent as text)
    client_id: str
    user_id: str | None
    conn_id: str
    metadata: Mapping[str, Any]


SubscribeVerdict: TypeAlias = bool | dict[str, Any] | None
SubscribeHook: TypeAlias = Callable[[SubscribeRequest],
                                    Awaitable[SubscribeVerdict] | SubscribeVerdict]
PublishHook: TypeAlias = Callable[[PublishRequest], Awaitable[Any] | Any]
