"""Channel options per namespace across nodes (memory hub, Redis, Redis Cluster): a group of a
namespace without history goes live (from a node, a client's publish and an Emitter) and a
resume keeps its membership without replaying it; a namespace without presence refuses
presence; who may publish is the namespace's choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stabilizer import (
    ChannelOptions,
    CloseCode,
    Emitter,
    MemoryBackend,
    PresenceDisabledError,
    PublishRequest,
    RPCError,
    SubscribeRequest,
    WebSocketConnectionManager,
)
from stabilizer.pure.v2 import ChannelRequest
from tests.integration.test_cluster import Cluster, cluster, started
from tests.integration.test_groups_history import resume_on
from tests.support.fakes import FakeSocket

__all__ = ["cluster"]  # the fixture, re-exported for pytest

NAMESPACES = {
    "live:": ChannelOptions(history=False),
    "quiet:": ChannelOptions(presence=False),
    "mine:": ChannelOptions(publish="members"),
    "news:": ChannelOptions(publish="nobody"),
}
HISTORY = {"history_size": 100, "history_ttl": 60.0, "session_ttl": 60.0,
           "channel_namespaces": NAMESPACES}
LIVE = {"channel_namespaces": NAMESPACES}


async def pair(cluster: Cluster, **settings: Any) -> tuple[WebSocketConnectionManager,
                                                           WebSocketConnectionManager]:
    a, b = cluster("a", **settings), cluster("b", **settings)
    await started(a, b)
    return a, b


async def member(manager: WebSocketConnectionManager, client_id: str,
                 *groups: str) -> FakeSocket:
    sock = FakeSocket(client_id)
    await manager.connect(client_id, sock)
    for group in groups:
        await manager.join_group(client_id, group)
    return sock


def conn_of(manager: WebSocketConnectionManager, client_id: str) -> Any:
    conn = manager.get_connection(client_id)
    assert conn is not None
    return conn


async def publish(manager: WebSocketConnectionManager, client_id: str, channel: str,
                  data: Any) -> dict[str, Any]:
    """A v2 client's publish, as its session hands it over; the reply frame."""
    reply = await manager._node.sessions.channels.publish(
        conn_of(manager, client_id), ChannelRequest(9, channel, data))
    parsed: dict[str, Any] = json.loads(reply)
    return parsed


async def subscribe(manager: WebSocketConnectionManager, client_id: str, channel: str, *,
                    presence: bool = False) -> dict[str, Any]:
    frames = await manager._node.sessions.channels.subscribe(
        conn_of(manager, client_id), ChannelRequest(8, channel, None, presence=presence))
    first = frames[0] if isinstance(frames, list) else frames
    parsed: dict[str, Any] = json.loads(first)
    return parsed


def emitter_for(manager: WebSocketConnectionManager) -> Emitter:
    """An Emitter with the replicas' settings, on their store."""
    backend = manager.backend
    if isinstance(backend, MemoryBackend):
        return Emitter(client=backend.hub, config=manager.config.replace(node_id=None))
    return Emitter(config=manager.config.replace(node_id=None))


# ----------------------------------------------------------------------------- history


async def test_a_group_without_history_goes_live_beside_a_sequenced_one(
        cluster: Cluster) -> None:
    a, b = await pair(cluster, **HISTORY)
    here, there = await member(a, "here", "live:1", "room"), await member(b, "there", "live:1")

    result = await a.send_to_group("live:1", "now")
    assert result.offset is None
    assert result.succeeded == 1
    for sock in (here, there):
        assert await sock.next_json() == {"type": "message", "stream": "g:live:1",
                                          "offset": None, "epoch": None, "data": "now"}
    assert (await a.send_to_group("room", "kept")).offset == 1  # other groups: sequenced
    assert (await here.next_json())["offset"] == 1
    found = await a.backend.history.read("g:live:1", 0, "")
    assert found.envelopes == []  # nothing went into a stream
    await b.send_to_group("live:1", "from b", exclude_client="there")
    assert (await here.next_json())["data"] == "from b"


async def test_a_clients_publish_to_a_group_without_history_goes_live(cluster: Cluster) -> None:
    a, b = await pair(cluster, **HISTORY)
    await member(a, "writer", "live:chat")
    reader = await member(b, "reader", "live:chat")

    @a.on_publish
    def allow(request: PublishRequest) -> Any:
        return request.data

    assert (await publish(a, "writer", "live:chat", "hi"))["result"] == {"channel": "live:chat"}
    frame = await reader.next_json()
    assert (frame["stream"], frame["offset"], frame["data"]) == ("g:live:chat", None, "hi")


async def test_an_emitter_send_to_a_group_without_history_goes_live(cluster: Cluster) -> None:
    a, b = await pair(cluster, **HISTORY)
    socks = [await member(a, "x", "live:feed"), await member(b, "y", "live:feed")]
    async with emitter_for(a) as emitter:
        result = await emitter.send_to_group("live:feed", {"n": 1})
        assert result.offset is None
        assert result.remote_nodes == 2
        assert (await emitter.send_to_group("room", "sequenced")).offset == 1
    for sock in socks:
        assert await sock.next_json() == {"type": "message", "stream": "g:live:feed",
                                          "offset": None, "epoch": None, "data": '{"n":1}'}
    found = await a.backend.history.read("g:live:feed", 0, "")
    assert found.envelopes == []


@pytest.mark.parametrize("same_node", [True, False])
async def test_a_resume_keeps_a_membership_without_history_and_replays_only_the_rest(
        cluster: Cluster, same_node: bool) -> None:
    a, b = await pair(cluster, **HISTORY)
    await member(a, "alice", "live:1", "room")
    await a.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    await b.send_to_group("live:1", "lost while away")
    await b.send_to_group("room", "kept while away")

    target = a if same_node else b
    sock, (recovered, replayed, failed) = await resume_on(target, "alice", {})
    assert (recovered, replayed, failed) == (True, 1, [])
    assert (await sock.next_json())["data"] == "kept while away"
    assert (await sock.next_json())["type"] == "resume"
    assert sorted(await target.get_client_groups("alice")) == ["live:1", "room"]
    await b.send_to_group("live:1", "live again")
    frame = await sock.next_json()
    assert (frame["data"], frame["offset"]) == ("live again", None)
    assert "lost while away" not in "".join(sock.texts())


async def test_a_position_held_for_a_group_without_history_is_not_a_loss(
        cluster: Cluster) -> None:
    """During a deploy that turns a namespace's history off, a replica of the old config
    still sequences its groups: a client holding a position of an older epoch of such a
    group is not told, on every resume on a new replica, that the stream was lost: the
    new replicas replay nothing of it, so nothing is missing."""
    old = cluster("old", history_size=100, history_ttl=60.0, session_ttl=60.0)
    new = cluster("new", **HISTORY)
    await started(old, new)
    await member(new, "alice", "live:1")
    assert (await old.send_to_group("live:1", "sequenced by the old config")).offset == 1
    await new.disconnect("alice", code=CloseCode.GOING_AWAY, reason="network lost")
    sock, (recovered, replayed, failed) = await resume_on(
        new, "alice", {"g:live:1": (7, "an-epoch-of-before")})
    assert (recovered, replayed, failed) == (True, 0, [])
    assert (await sock.next_json())["type"] == "resume"
    await new.send_to_group("live:1", "live")
    assert (await sock.next_json())["data"] == "live"


# ---------------------------------------------------------------------------- presence


async def test_a_namespace_without_presence_refuses_it_on_every_path(cluster: Cluster) -> None:
    a, b = await pair(cluster, **LIVE)
    await member(a, "alice")
    await member(b, "bob")
    with pytest.raises(PresenceDisabledError, match="quiet:1"):
        await a.join_group("bob", "quiet:1", presence={"name": "Bob"})
    assert await a.get_group_members("quiet:1") == []  # nothing was changed
    await a.join_group("bob", "quiet:1")  # a plain membership is fine
    with pytest.raises(PresenceDisabledError):
        await a.update_presence("bob", "quiet:1", {"name": "Bob"})
    with pytest.raises(PresenceDisabledError):
        await b.get_presence("quiet:1")
    with pytest.raises(PresenceDisabledError):
        await b.count_presence("quiet:1")
    assert await a.get_presence("room") == {}  # other groups answer as before

    @a.on_subscribe
    def allow(request: SubscribeRequest) -> Any:
        return {"seat": 1} if request.params == "with-meta" else None

    refused = await subscribe(a, "alice", "quiet:2", presence=True)
    assert refused["error"]["code"] == "bad_request"
    assert "no presence" in refused["error"]["message"]
    assert (await subscribe(a, "alice", "quiet:2"))["result"] == {"channel": "quiet:2"}


async def test_presence_metadata_from_the_hook_for_a_namespace_without_presence_is_refused(
        cluster: Cluster) -> None:
    a, _ = await pair(cluster, **LIVE)
    await member(a, "alice")

    @a.on_subscribe
    def allow(request: SubscribeRequest) -> Any:
        return {"seat": 1}

    reply = await a._node.sessions.channels.subscribe(
        conn_of(a, "alice"), ChannelRequest(8, "quiet:3", None))
    assert isinstance(reply, str)
    assert json.loads(reply)["error"]["code"] == "internal"
    assert await a.get_group_members("quiet:3") == []
    assert (await subscribe(a, "alice", "room"))["result"] == {"channel": "room"}
    assert await a.count_presence("room") == 1  # elsewhere the metadata is taken


# ----------------------------------------------------------------------------- publish


async def test_nobody_publishes_to_a_read_only_namespace_but_the_server_does(
        cluster: Cluster) -> None:
    a, b = await pair(cluster, **LIVE)
    await member(a, "writer", "news:today")
    reader = await member(b, "reader", "news:today")
    asked: list[str] = []

    @a.on_publish
    def allow(request: PublishRequest) -> Any:
        asked.append(request.channel)
        return request.data

    reply = await publish(a, "writer", "news:today", "spam")
    assert reply["error"]["code"] == "forbidden"
    assert asked == []  # refused before the hook
    await a.send_to_group("news:today", "headline")
    assert await reader.next() == "headline"


async def test_members_only_without_a_hook_publish_as_sent(cluster: Cluster) -> None:
    a, b = await pair(cluster, **LIVE)
    await member(a, "insider", "mine:club")
    await member(a, "outsider")
    reader = await member(b, "reader", "mine:club")

    reply = await publish(a, "outsider", "mine:club", "let me in")
    assert reply["error"]["code"] == "forbidden"
    assert "only members" in reply["error"]["message"]
    assert (await publish(a, "insider", "mine:club", {"hi": 1}))["result"] == {
        "channel": "mine:club"}
    assert json.loads(await reader.next()) == {"hi": 1}
    # elsewhere, no hook still means no publications
    assert (await publish(a, "insider", "room", "x"))["error"]["code"] == "forbidden"


async def test_members_only_with_a_hook_still_lets_it_rewrite_or_refuse(
        cluster: Cluster) -> None:
    a, b = await pair(cluster, **LIVE)
    await member(a, "insider", "mine:club")
    await member(a, "outsider")
    reader = await member(b, "reader", "mine:club")
    asked: list[str] = []

    @a.on_publish
    def rewrite(request: PublishRequest) -> Any:
        asked.append(request.client_id)
        if request.data == "rude":
            raise RPCError("rude", "mind your words")
        return f"{request.client_id}: {request.data}"

    assert (await publish(a, "outsider", "mine:club", "hello"))["error"]["code"] == "forbidden"
    assert (await publish(a, "insider", "mine:club", "rude"))["error"]["code"] == "rude"
    assert (await publish(a, "insider", "mine:club", "hello"))["result"] == {
        "channel": "mine:club"}
    assert await reader.next() == "insider: hello"
    assert asked == ["insider", "insider"]  # the outsider never reached the hook
