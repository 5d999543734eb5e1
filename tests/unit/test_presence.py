"""Presence with state: the pure core (metadata checks, changes, coalescing, a client's
copy) and the manager's API on the embedded backend, v2 subscribes that follow presence
included."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from stabilizer import (
    ConnectionNotFoundError,
    NotAMemberError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.errors import ConfigError
from stabilizer.pure.presence import (
    MAX_META_BYTES,
    Change,
    PresenceSync,
    coalesce,
    encode_meta,
    entry_text,
    parse_change,
    parse_changes,
    parse_entry,
)
from stabilizer.pure.v2 import BadCallError, ChannelRequest, parse_channel_request
from tests.support.fakes import FakeSocket


def test_metadata_must_be_a_small_json_object() -> None:
    assert encode_meta({"name": "Zoë", "n": [1, 2]}) == '{"name":"Zoë","n":[1,2]}'
    for bad, problem in (([1], "must be a dict"), ("x", "must be a dict"),
                         ({"x": {1, 2}}, "JSON-serialisable"),
                         ({"x": float("nan")}, "JSON-serialisable"),
                         ({"x": "y" * MAX_META_BYTES}, "the limit is 1024")):
        with pytest.raises(ValueError, match=problem):
            encode_meta(bad)


def test_entries_and_changes_parse_strictly() -> None:
    raw = entry_text("c|1", "u\"1", '{"a":1}')
    entry = parse_entry(raw)
    assert entry is not None
    assert (entry.client_id, entry.user_id, entry.meta, entry.key) == ("c|1", 'u"1', {"a": 1},
                                                                     'u"1')
    assert parse_entry(entry_text("c", None, "{}")).key == "c"  # type: ignore[union-attr]
    for bad in ("", "[]", '{"c":1,"m":{}}', '{"c":"x","m":[]}', '{"c":"x","u":2,"m":{}}'):
        assert parse_entry(bad) is None
    change = parse_change(f"[null,{raw}]", "17")
    assert change == Change(17, "c|1", None, entry)
    for payload, version in ((f"[null,{raw}]", None), (f"[null,{raw}]", "x"),
                             ("[null,null]", "1"), ("[1,2]", "1"), ("{}", "1"),
                             (f"[{raw}]", "1"), ("nope", "1")):
        assert parse_change(payload, version) is None


def test_a_batch_of_changes_parses_strictly() -> None:
    a, b = entry_text("a", None, '{"n":1}'), entry_text("b", "u", "{}")
    assert parse_changes(f"[{a},null]", "5") == [Change(5, "a", parse_entry(a), None)]
    batch = parse_changes(f"[[7,{a},null],[8,null,{b}],[10,{b},null]]", "10")
    assert batch == [Change(7, "a", parse_entry(a), None), Change(8, "b", None, parse_entry(b)),
                     Change(10, "b", parse_entry(b), None)]
    for payload, version in ((f"[[7,{a},null]]", "8"),  # the ref is not the last version
                             (f"[[7,{a},null],[7,{b},null]]", "7"),  # versions must grow
                             (f"[[8,{a},null],[7,{b},null]]", "7"),
                             (f"[[true,{a},null]]", "1"), (f'[["7",{a},null]]', "7"),
                             (f"[[7,{a}]]", "7"), ("[[7,null,null]]", "7"), ("[]", "1"),
                             (f"[[7,{a},null],{a}]", "7"), (f"[[7,{a},null]]", None),
                             ('[[7,{"c":1},null]]', "7"), ("[[7,1,null]]", "7")):
        assert parse_changes(payload, version) is None, payload


def change(version: int, client_id: str, old: str | None, new: str | None,
           user_id: str | None = None) -> Change:
    def entry(name: str | None) -> Any:
        return None if name is None else parse_entry(
            entry_text(client_id, user_id, json.dumps({"name": name})))
    return Change(version, client_id, entry(old), entry(new))


def test_a_window_of_changes_coalesces_into_one_diff() -> None:
    diff = coalesce([change(1, "a", None, "A"), change(2, "b", None, "B", user_id="u"),
                     change(3, "a", "A", "A2"), change(4, "c", None, "C"),
                     change(5, "c", "C", None)])
    assert diff == {"joins": {"a": [{"client_id": "a", "meta": {"name": "A2"}}],
                              "u": [{"client_id": "b", "meta": {"name": "B"}}]},
                    "leaves": {}}
    # an update is a leave of what it was and a join of what it is
    assert coalesce([change(6, "a", "A2", "A3"), change(7, "a", "A3", "A4")]) == {
        "joins": {"a": [{"client_id": "a", "meta": {"name": "A4"}}]},
        "leaves": {"a": [{"client_id": "a", "meta": {"name": "A2"}}]}}
    # a join then a leave in one window cancels out; so does a change undone
    assert coalesce([change(8, "d", None, "D"), change(9, "d", "D", None)]) is None
    assert coalesce([change(10, "a", "A", "B"), change(11, "a", "B", "A")]) is None
    assert coalesce([]) is None


def test_a_clients_copy_follows_state_and_diffs() -> None:
    sync = PresenceSync()
    alice = {"client_id": "a1", "meta": {"tab": 1}}
    alice2 = {"client_id": "a2", "meta": {"tab": 2}}
    bob = {"client_id": "b", "meta": {}}
    changed = sync.sync_state({"alice": [alice], "bob": [bob]})
    assert changed == {"joins": {"alice": [alice], "bob": [bob]}, "leaves": {}}
    sync.sync_diff({"joins": {"alice": [alice2]}, "leaves": {"bob": [bob]}})
    assert sync.list() == {"alice": [alice, alice2]}
    assert sync.count() == 2
    updated = {"client_id": "a1", "meta": {"tab": 3}}
    sync.sync_diff({"joins": {"alice": [updated]}, "leaves": {"alice": [alice]}})
    assert sync.list() == {"alice": [updated, alice2]}
    assert sync.sync_state({"alice": [alice2]}) == {"joins": {},
                                                   "leaves": {"alice": [updated]}}
    sync.sync_diff({"joins": "junk", "leaves": {"alice": ["junk", {"client_id": "a2"}]}})
    assert sync.list() == {}


def test_a_subscribe_may_ask_to_follow_presence_with_a_boolean_only() -> None:
    assert parse_channel_request("subscribe", {"id": 1, "channel": "a", "presence": True}) == (
        ChannelRequest(1, "a", None, presence=True))
    assert not parse_channel_request("subscribe", {"id": 1, "channel": "a"}).presence
    for value in ("yes", 1, None, {}):
        with pytest.raises(BadCallError, match="presence must be true or false"):
            parse_channel_request("subscribe", {"id": 1, "channel": "a", "presence": value})


def test_the_diff_window_is_validated() -> None:
    assert WebSocketConfig(presence_diff_window=0).presence_diff_window == 0
    for bad in (-1, float("nan"), 61, "0.1", True):
        with pytest.raises(ConfigError, match="presence_diff_window"):
            WebSocketConfig(presence_diff_window=bad)  # type: ignore[arg-type]


async def test_the_managers_presence_api_on_one_node() -> None:
    async with WebSocketConnectionManager() as manager:
        await manager.connect("alice", FakeSocket("alice"))
        await manager.connect("bob", FakeSocket("bob"))
        await manager.join_group("alice", "room", presence={"name": "Alice"})
        await manager.join_group("bob", "room")  # no presence: not listed
        assert await manager.get_presence("room") == {
            "alice": [{"client_id": "alice", "meta": {"name": "Alice"}}]}
        assert await manager.count_presence("room") == 1
        await manager.update_presence("alice", "room", {"name": "Al"})
        assert (await manager.get_presence("room"))["alice"][0]["meta"] == {"name": "Al"}
        with pytest.raises(NotAMemberError):
            await manager.update_presence("bob", "hall", {})
        with pytest.raises(ConnectionNotFoundError):
            await manager.update_presence("carol", "room", {})
        with pytest.raises(ConnectionNotFoundError):
            await manager.join_group("carol", "room", presence={})
        for bad in ([1], {"x": object()}, {"x": "y" * 2000}):
            with pytest.raises(ValueError, match="presence metadata"):
                await manager.join_group("bob", "room", presence=bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="presence metadata"):
                await manager.update_presence("alice", "room", bad)  # type: ignore[arg-type]
        assert await manager.count_presence("room") == 1
        await manager.leave_group("alice", "room")
        assert await manager.get_presence("room") == {}
        await manager.join_group("alice", "room", presence={"name": "again"})
        await manager.disconnect("alice")  # no resumable session: its membership ends
        assert await manager.count_presence("room") == 0


async def follow(socket: FakeSocket, sync: PresenceSync, wanted: dict[str, Any]) -> None:
    """Apply the socket's presence frames to `sync` until it lists `wanted`."""
    async with asyncio.timeout(3):
        while sync.list() != wanted:
            frame = await socket.next_json()
            if frame.get("type") == "presence_diff":
                sync.sync_diff(frame)


async def test_a_subscribe_with_presence_gets_the_state_then_the_changes() -> None:
    async with WebSocketConnectionManager(WebSocketConfig(presence_diff_window=0.01)) as manager:
        alice = FakeSocket("alice")
        await manager.connect("alice", alice)
        await manager.connect("bob", FakeSocket("bob"))
        await manager.join_group("bob", "room", presence={"name": "Bob"})
        asked: list[SubscribeRequest] = []

        @manager.on_subscribe
        def allow(request: SubscribeRequest) -> dict[str, Any] | bool:
            asked.append(request)
            return {"name": "Alice"} if request.channel == "room" else {"bad": {1}}

        conn = manager.get_connection("alice")
        assert conn is not None
        channels = manager._node.sessions.channels
        frames = await channels.subscribe(conn, ChannelRequest(1, "room", None, presence=True))
        assert isinstance(frames, list)
        reply, state = (json.loads(frame) for frame in frames)
        assert reply == {"type": "reply", "id": 1, "result": {"channel": "room"}}
        assert state == {"type": "presence_state", "channel": "room", "presence": {
            "alice": [{"client_id": "alice", "meta": {"name": "Alice"}}],
            "bob": [{"client_id": "bob", "meta": {"name": "Bob"}}]}}
        assert asked[0].presence
        sync = PresenceSync()
        sync.sync_state(state["presence"])
        await manager.update_presence("bob", "room", {"name": "Robert"})
        await follow(alice, sync, {"alice": [{"client_id": "alice", "meta": {"name": "Alice"}}],
                                   "bob": [{"client_id": "bob", "meta": {"name": "Robert"}}]})
        await manager.leave_group("bob", "room")
        await follow(alice, sync, {"alice": [{"client_id": "alice", "meta": {"name": "Alice"}}]})
        refused = json.loads(await channels.subscribe(  # type: ignore[arg-type]
            conn, ChannelRequest(2, "odd", None)))
        assert refused["error"]["code"] == "internal"  # the hook's metadata is not JSON


async def test_the_clients_presence_helper_applies_frames_and_reports_changes() -> None:
    from stabilizer.client.presence import ChannelPresence
    from stabilizer.pure.client_v2 import channel_frame

    assert json.loads(channel_frame("subscribe", 1, "room", presence=True)) == {
        "type": "subscribe", "id": 1, "channel": "room", "presence": True}
    assert "presence" not in json.loads(channel_frame("subscribe", 1, "room"))
    room = ChannelPresence("room")
    seen: list[tuple[Any, Any]] = []

    @room.on_change
    def record(joins: Any, leaves: Any) -> None:
        seen.append((joins, leaves))

    room.on_change(lambda joins, leaves: 1 / 0)  # an application's bug is logged only
    alice = {"client_id": "a", "meta": {}}
    waiter = asyncio.ensure_future(room.until(lambda p: "bob" in p))
    await room.apply({"type": "presence_state", "channel": "room",
                      "presence": {"alice": [alice]}})
    assert not waiter.done()
    bob = {"client_id": "b", "meta": {"x": 1}}
    await room.apply({"type": "presence_diff", "channel": "room", "joins": {"bob": [bob]},
                      "leaves": {"alice": [alice]}})
    assert await waiter == {"bob": [bob]}
    assert room.count() == 1
    assert seen == [({"alice": [alice]}, {}), ({"bob": [bob]}, {"alice": [alice]})]
