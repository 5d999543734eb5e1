"""A plain client (no subprotocol) that names no client id, on the README's endpoint
`session(manager, websocket)`, is given a device of its own at each connect. Its reconnect
token names the client id it had, so a reconnect with `?token=` resumes under that id when
it is one of the same user's (or, anonymous, a plain device). Before, every connect drew a
new device, the token never matched, and each reconnect was refused 4501."""

from __future__ import annotations

import json

from stabilizer import Identity, WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeWebSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


async def _first_frame(ws: FakeWebSocket) -> dict[str, object]:
    frame = json.loads(await ws.next())
    assert isinstance(frame, dict)
    return frame


async def test_a_plain_user_without_a_client_id_resumes_with_its_token(
        make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    ann = Identity("ann")
    first = FakeWebSocket("first")
    async with manager.open_session(first, identity=ann):
        welcome = await _first_frame(first)
        first.client_leaves()
    client_id, token = welcome["client_id"], welcome["token"]
    assert isinstance(client_id, str)
    assert client_id.startswith("ann/")
    assert isinstance(token, str)
    again = FakeWebSocket("again")
    async with manager.open_session(again, token=token, identity=ann) as session:
        assert session.refused is None
        back = await _first_frame(again)
        again.client_leaves()
    assert back["client_id"] == client_id
    assert back["resumed"] is True


async def test_an_anonymous_plain_client_resumes_with_its_token(
        make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    first = FakeWebSocket("first")
    async with manager.open_session(first):
        welcome = await _first_frame(first)
        first.client_leaves()
    again = FakeWebSocket("again")
    async with manager.open_session(again, token=str(welcome["token"])) as session:
        assert session.refused is None
        back = await _first_frame(again)
        again.client_leaves()
    assert (back["client_id"], back["resumed"]) == (welcome["client_id"], True)


async def test_a_token_of_another_user_gives_no_device_of_theirs(
        make_manager: ManagerFactory) -> None:
    manager = make_manager(WebSocketConfig(**QUIET))
    bobs = FakeWebSocket("bob")
    async with manager.open_session(bobs, identity=Identity("bob")):
        welcome = await _first_frame(bobs)
        bobs.client_leaves()
    for identity in (Identity("ann"), None):  # a user, and an anonymous client
        ws = FakeWebSocket("thief")
        async with manager.open_session(ws, token=str(welcome["token"]),
                                        identity=identity) as session:
            assert session.refused == 4501  # issued to another client: not bob's session
        assert manager.get_connection(str(welcome["client_id"])) is None
