"""Ids no client, user or group can have get the documented "unknown" answer from every
public call of the manager, the same on every backend: the backend never sees them.

Such ids reach the API from clients: json.loads makes a lone surrogate of a ``"\\ud800"``
escape (a str UTF-8 cannot encode, so no Redis key or frame can carry it), and a JSON body
holds null, numbers and lists where an app expects a string.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stabilizer import (
    ConnectionNotFoundError,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0}
BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis),
            pytest.param("redis-history", marks=pytest.mark.redis)]

LONE_SURROGATE = json.loads('"\\ud800"')
#: Each unusable as a client id (default limit 321), a user id (256) and a group (256).
UNUSABLE: list[object] = [LONE_SURROGATE, f"ann/{LONE_SURROGATE}", None, 7, ["a"], "",
                          "x" * 322]

Call = Callable[[WebSocketConnectionManager, Any], Awaitable[object]]


async def _sync(value: object) -> object:
    return value


#: (name, call, the documented answer for an id nobody can have)
ANSWERING: list[tuple[str, Call, object]] = [
    ("send_to_client", lambda m, bad: m.send_to_client(bad, "hi"), False),
    ("send_to_client ack",
     lambda m, bad: m.send_to_client(bad, "hi", ack=True, timeout=0.5), False),
    ("send_to_user", lambda m, bad: m.send_to_user(bad, "hi"), 0),
    ("send_to_user ack", lambda m, bad: m.send_to_user(bad, "hi", ack=True, timeout=0.5), 0),
    ("disconnect_user", lambda m, bad: m.disconnect_user(bad), 0),
    ("get_user_connections", lambda m, bad: m.get_user_connections(bad), []),
    ("locate_client", lambda m, bad: m.locate_client(bad), None),
    ("find_client", lambda m, bad: m.find_client(bad), None),
    ("disconnect_client", lambda m, bad: m.disconnect_client(bad), False),
    ("get_client_groups", lambda m, bad: m.get_client_groups(bad), []),
    ("get_user_data", lambda m, bad: m.get_user_data(bad, "k"), None),
    ("handle_pong", lambda m, bad: m.handle_pong(bad), None),
    ("is_connected", lambda m, bad: _sync(m.is_connected(bad)), False),
    ("get_connection", lambda m, bad: _sync(m.get_connection(bad)), None),
]

#: (name, call, the exception documented for an id nobody can have)
RAISING: list[tuple[str, Call, type[Exception]]] = [
    ("set_user_data", lambda m, bad: m.set_user_data(bad, "k", 1), ConnectionNotFoundError),
    ("disconnect", lambda m, bad: m.disconnect(bad), ConnectionNotFoundError),
    ("ping", lambda m, bad: m.ping(bad, timeout=0.5), ConnectionNotFoundError),
    ("join_group", lambda m, bad: m.join_group(bad, "room"), ConnectionNotFoundError),
    ("leave_group", lambda m, bad: m.leave_group(bad, "room"), ValueError),
    ("update_presence", lambda m, bad: m.update_presence(bad, "room", {}),
     ConnectionNotFoundError),
    ("send_to_group group", lambda m, bad: m.send_to_group(bad, "hi"), ValueError),
    ("join_group group", lambda m, bad: m.join_group("alice", bad), ValueError),
    ("get_group_members", lambda m, bad: m.get_group_members(bad), ValueError),
    ("count_group_members", lambda m, bad: m.count_group_members([bad]), ValueError),
    ("get_presence", lambda m, bad: m.get_presence(bad), ValueError),
    ("count_presence", lambda m, bad: m.count_presence(bad), ValueError),
]


async def received(socket: FakeSocket, text: str) -> None:
    """Wait for the frame carrying `text`: itself, or with history its sequenced frame."""
    while True:
        frame = await socket.next()
        if frame == text or (isinstance(frame, str) and f'"data":"{text}"' in frame):
            return


@pytest.fixture
def alice() -> FakeSocket:
    """The socket of the one client connected."""
    return FakeSocket("alice")


@pytest.fixture(params=BACKENDS)
async def manager(request: pytest.FixtureRequest, make_manager: ManagerFactory,
                  namespace: str, alice: FakeSocket,
                  ) -> WebSocketConnectionManager:
    """A started manager on one backend, with "alice" connected and in group "room"."""
    settings: dict[str, Any] = {"namespace": namespace, **QUIET}
    if request.param != "memory":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    if request.param == "redis-history":
        settings.update(HISTORY)
    node = make_manager(WebSocketConfig(**settings))
    await node.start()
    await node.connect("alice", alice)
    await node.join_group("alice", "room")
    return node


@pytest.mark.parametrize(("call", "answer"), [pytest.param(call, answer, id=name)
                                              for name, call, answer in ANSWERING])
async def test_an_unusable_id_gets_the_unknown_answer(
    manager: WebSocketConnectionManager, call: Call, answer: object,
) -> None:
    wrong = {}
    for bad in UNUSABLE:
        try:
            got = await call(manager, bad)
        except Exception as exc:  # what each id did, all reported at once
            wrong[repr(bad)[:12]] = f"raised {type(exc).__name__}"
            continue
        if got != answer:
            wrong[repr(bad)[:12]] = f"answered {got!r}"
    assert wrong == {}
    assert manager.is_connected("alice")  # nothing closed the client that exists


@pytest.mark.parametrize(("call", "error"), [pytest.param(call, error, id=name)
                                             for name, call, error in RAISING])
async def test_an_unusable_id_raises_the_documented_error(
    manager: WebSocketConnectionManager, call: Call, error: type[Exception],
) -> None:
    wrong = {}
    for bad in UNUSABLE:
        try:
            got = await call(manager, bad)
        except error:
            continue
        except Exception as exc:  # what each id did, all reported at once
            wrong[repr(bad)[:12]] = f"raised {type(exc).__name__}"
            continue
        wrong[repr(bad)[:12]] = f"answered {got!r}"
    assert wrong == {}


@pytest.mark.parametrize("to_group", [False, True], ids=["broadcast", "send_to_group"])
async def test_an_unusable_exclude_client_excludes_nobody(
    manager: WebSocketConnectionManager, alice: FakeSocket, to_group: bool,
) -> None:
    wrong = {}
    for number, bad in enumerate(UNUSABLE):
        text = f"message {number}"
        try:
            if to_group:
                await manager.send_to_group("room", text, exclude_client=bad)
            else:
                await manager.broadcast(text, exclude_client=bad)
            await received(alice, text)  # alice, the one client (and member), got it
        except Exception as exc:  # what each id did, all reported at once
            wrong[repr(bad)[:12]] = f"raised {type(exc).__name__}"
    assert wrong == {}
