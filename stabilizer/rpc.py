"""What a remote procedure sees of the call it answers (protocol v2, docs/protocol.md 6.5).

Register a procedure with ``@manager.rpc("name")``; a v2 client calls it with
``rpc("name", params)`` and gets its return value, or an RPCError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class RPCCall:
    """One call of a procedure by a connected client."""

    method: str
    params: Any  # what the client sent: any JSON value (None when it sent none)
    client_id: str
    user_id: str | None  # the authenticated user, None for an anonymous client
    conn_id: str
    metadata: Mapping[str, Any]  # the connection's metadata, as connect() was given it


#: A procedure: takes the call, returns a JSON value (directly or as an awaitable).
RPCHandler: TypeAlias = Callable[[RPCCall], Awaitable[Any] | Any]
