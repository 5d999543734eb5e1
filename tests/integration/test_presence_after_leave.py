"""A client the server takes out of a channel (`leave_group`, on its own node or from
another) stops getting the channel's presence. The watcher its subscribe made was dropped
only on the client's own unsubscribe, its close, or when no local member was left: while
another local connection still followed the channel, the removed client went on getting
every `presence_diff`, who joined and left and their metadata."""

from __future__ import annotations

import json

import pytest

from stabilizer import (
    BackendUnavailable,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.connection.connection import Connection
from stabilizer.pure.v2 import ChannelRequest
from stabilizer.services.channels import Channels
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket


async def presence_node(manager: WebSocketConnectionManager,
                        *names: str) -> dict[str, FakeSocket]:
    """Start `manager` with a hook that allows every subscribe, with presence metadata
    naming the client, and connect a socket for each of `names`."""

    def allow(request: SubscribeRequest) -> dict[str, str]:
        return {"name": request.client_id}

    manager.on_subscribe(allow)
    await manager.start()
    socks = {name: FakeSocket(name) for name in names}
    for name, sock in socks.items():
        await manager.connect(name, sock)
    return socks


async def alice_following(manager: WebSocketConnectionManager) -> tuple[
        dict[str, FakeSocket], Channels, Connection]:
    """A node with alice and dave connected, alice a member of "room" following its
    presence: their sockets, the node's channels and alice's connection."""
    socks = await presence_node(manager, "alice", "dave")
    channels = manager._node.sessions.channels
    alice = manager.get_connection("alice")
    assert alice is not None
    await channels.subscribe(alice, ChannelRequest(1, "room", None, presence=True))
    return socks, channels, alice


async def hears_dave_join(manager: WebSocketConnectionManager, sock: FakeSocket) -> None:
    """Dave subscribes to "room" too; wait until `sock` gets a diff naming him."""
    channels = manager._node.sessions.channels
    dave = manager.get_connection("dave")
    assert dave is not None
    await channels.subscribe(dave, ChannelRequest(1, "room", None, presence=True))
    while not any("dave" in json.dumps(diff) for diff in _diffs(sock)):
        await sock.next()  # (each frame she gets, awaited: times out if none comes)


async def unreadable(group: str) -> object:
    """A presence state read that finds the store down."""
    raise BackendUnavailable("redis unavailable: no answer within 2s")


def _diffs(sock: FakeSocket) -> list[dict[str, object]]:
    frames = [json.loads(text) for text in sock.texts()]
    return [frame for frame in frames if frame.get("type") == "presence_diff"]


async def test_a_client_taken_out_of_a_channel_stops_getting_its_presence(
        make_manager: ManagerFactory, config: WebSocketConfig) -> None:
    manager: WebSocketConnectionManager = make_manager(config)
    socks = await presence_node(manager, "alice", "carol", "dave")
    channels = manager._node.sessions.channels
    for name in ("alice", "carol"):
        conn = manager.get_connection(name)
        assert conn is not None
        await channels.subscribe(conn, ChannelRequest(1, "room", None, presence=True))
    await manager.leave_group("alice", "room")
    alice = manager.get_connection("alice")
    assert alice is not None
    assert "room" not in alice.groups
    seen_by_alice = len(_diffs(socks["alice"]))
    dave = manager.get_connection("dave")
    assert dave is not None
    await channels.subscribe(dave, ChannelRequest(1, "room", None, presence=True))
    carol = socks["carol"]
    while not any("dave" in json.dumps(diff) for diff in _diffs(carol)):  # carol, a member,
        await carol.next()  # hears of dave (each frame she gets, awaited: no sleep)
    assert len(_diffs(socks["alice"])) == seen_by_alice  # alice hears of nobody any more


async def test_a_subscribe_whose_presence_read_fails_leaves_the_client_out(
        make_manager: ManagerFactory, config: WebSocketConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The join went through, then reading the channel's presence state failed: the client
    is answered `unavailable` ("not subscribed"), so it must not stay a member. Before, it
    did: it got the channel's messages though it was told it had not subscribed."""
    manager: WebSocketConnectionManager = make_manager(config)
    await presence_node(manager, "alice")
    conn = manager.get_connection("alice")
    assert conn is not None
    channels = manager._node.sessions.channels

    monkeypatch.setattr(channels._watch, "read_state", unreadable)
    reply = await channels.subscribe(conn, ChannelRequest(1, "room", None, presence=True))
    first = json.loads(reply[0] if isinstance(reply, list) else reply)
    assert first["error"]["code"] == "unavailable"
    assert "room" not in conn.groups
    assert await manager.get_group_members("room") == []


async def test_a_repeated_presence_subscribe_that_fails_keeps_the_presence_followed(
        make_manager: ManagerFactory, config: WebSocketConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that follows a channel's presence subscribes to it again (a client's
    re-sync, say) and that attempt fails (`unavailable`): it is still a member, and must go
    on hearing who joins. Before, the failed attempt dropped its presence watcher: its copy
    of the presence went stale for good, with no frame saying so."""
    manager: WebSocketConnectionManager = make_manager(config)
    socks, channels, alice = await alice_following(manager)
    read_state = channels._watch.read_state
    monkeypatch.setattr(channels._watch, "read_state", unreadable)
    reply = await channels.subscribe(alice, ChannelRequest(2, "room", None, presence=True))
    first = json.loads(reply[0] if isinstance(reply, list) else reply)
    assert first["error"]["code"] == "unavailable"
    assert "room" in alice.groups  # still the member its first subscribe made
    monkeypatch.setattr(channels._watch, "read_state", read_state)
    await hears_dave_join(manager, socks["alice"])


async def test_an_unsubscribe_that_fails_keeps_the_presence_followed(
        make_manager: ManagerFactory, config: WebSocketConfig,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An unsubscribe whose leave the backend cannot take is answered `unavailable` ("not
    unsubscribed"): the client is still a member, and must go on hearing who joins. Before,
    the unsubscribe dropped its presence watcher before the leave was tried: its copy of
    the presence went stale for good, with no frame saying so."""
    manager: WebSocketConnectionManager = make_manager(config)
    socks, channels, alice = await alice_following(manager)
    groups = manager.backend.groups
    leave = groups.leave

    async def unwritable(client_id: str, group: str) -> object:
        raise BackendUnavailable("redis unavailable: no answer within 2s")

    monkeypatch.setattr(groups, "leave", unwritable)
    reply = json.loads(await channels.unsubscribe(alice, ChannelRequest(2, "room", None)))
    assert reply["error"]["code"] == "unavailable"
    assert "room" in alice.groups  # still a member
    monkeypatch.setattr(groups, "leave", leave)
    await hears_dave_join(manager, socks["alice"])
