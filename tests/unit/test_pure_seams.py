"""Pure seams of the layout: stream names and targets, positions bounds, envelope prefixes
that Redis scripts complete, cluster-event bodies, and the schedule letting go of keys."""

from __future__ import annotations

import gc
import json
import weakref

import msgpack
import pytest

from stabilizer.errors import WireError
from stabilizer.pure.positions import (
    MAX_OFFSET,
    MAX_POSITIONS_TEXT,
    PositionsError,
    parse_positions,
    replay_start,
)
from stabilizer.pure.schedule import HeartbeatSchedule
from stabilizer.pure.streams import (
    ALL,
    ClientPositions,
    Step,
    StreamOrder,
    Target,
    begun_since,
    client_stream,
    group_stream,
)
from stabilizer.pure.wire import (
    FRESH,
    WIRE_VERSION,
    Envelope,
    Kind,
    array_prefix,
    decode,
    event_body,
    event_of,
    event_prefix,
    kick_prefix,
    pack_str,
    sequenced_prefix,
)
from stabilizer.results import ClusterEvent

# ----------------------------------------------------------------------------- streams


@pytest.mark.parametrize("target", [Target("all"), Target("group", "room:1"),
                                    Target("client", "c:weird|id"), Target("group", "g:")])
def test_a_target_and_its_stream_name_round_trip(target: Target) -> None:
    assert Target.of_stream(target.stream) == target


def test_stream_names_are_the_documented_ones() -> None:
    assert (ALL, group_stream("room"), client_stream("bob")) == ("all", "g:room", "c:bob")


@pytest.mark.parametrize("name", ["", "g:", "c:", "x:y", "All"])
def test_a_name_no_target_has_is_none(name: str) -> None:
    assert Target.of_stream(name) is None


def test_an_envelope_knows_its_destination_and_stream() -> None:
    direct = Envelope(Kind.DIRECT, "n", "bob", "hi")
    assert (direct.destination, direct.stream) == (Target("client", "bob"), "c:bob")
    assert Envelope(Kind.KICK, "n", "bob").stream is None


def test_a_client_is_admitted_nothing_at_or_before_the_position_it_holds() -> None:
    positions = ClientPositions()
    assert positions.admit("all", 6, "e1")  # the resumed client's own position
    assert [offset for offset in (4, 5, 6, 7, 7, 8) if positions.admit("all", offset, "e1")] == [
        7, 8]
    assert positions.held("all") == (8, "e1")


def test_a_new_epoch_starts_a_client_position_again() -> None:
    positions = ClientPositions()
    positions.admit("g:room", 9, "old")
    assert positions.admit("g:room", 1, "new")
    assert not positions.admit("g:room", 1, "new")
    assert positions.admit("all", 1, "old")  # streams are independent
    assert positions.held("g:room") == (1, "new")
    assert positions.held("c:bob") is None


def test_a_session_begun_since_a_connection_has_baselines_past_all_it_was_sent() -> None:
    positions = ClientPositions()
    positions.admit("c:bob", 7, "e1")
    positions.admit("u:ann", 3, "e2")
    held = positions.holding(["c:bob", "u:ann", "all"])
    assert held == {"c:bob": (7, "e1"), "u:ann": (3, "e2")}
    # a fresh session: its baselines were read after the connection was sent those
    assert begun_since({"all": (1, "e0"), "c:bob": (7, "e1"), "u:ann": (4, "e2")}, held)
    # the session the connection held (resumed since): it began before what it was sent
    assert not begun_since({"c:bob": (5, "e1"), "u:ann": (3, "e2")}, held)
    assert not begun_since({"c:bob": (9, "e3"), "u:ann": (3, "e2")}, held)  # another epoch
    assert not begun_since({"all": (9, "e0")}, held)  # no stream tells


def test_a_node_starts_following_a_stream_only_where_it_does_not_yet() -> None:
    order = StreamOrder()
    order.advance("all", 4, "e1", 0.0)
    order.start("all", 6, "e1")  # a client resumed ahead of the node: its order stays
    order.start("g:room", 2, "e1")
    assert (order.last("all"), order.last("g:room")) == ((4, "e1"), (2, "e1"))


def test_a_new_epoch_is_next_in_line_only_from_its_first_offset() -> None:
    order = StreamOrder()
    order.advance("all", 7, "old", 0.0)
    assert order.classify("all", 1, "new") is Step.DELIVER  # the old epoch ended, all seen
    assert order.classify("all", 2, "new") is Step.GAP  # offset 1 of the new one is missing
    order.start_over("all", "new")
    assert order.last("all") == (0, "new")
    assert order.classify("all", 1, "new") is Step.DELIVER


def test_a_stream_followed_from_before_its_first_message_waits_for_offset_one() -> None:
    order = StreamOrder()
    order.start("all", 0, "")  # a session began before `all` had any message
    assert order.classify("all", 1, "e1") is Step.DELIVER
    assert order.classify("all", 2, "e1") is Step.GAP
    order.advance("all", 1, "e1", 0.0)
    assert order.last("all") == (1, "e1")


# ----------------------------------------------------------------------------- positions


@pytest.mark.parametrize("text", [
    "[" * 1500, '{"a":' * 1500, '{"all": [[1], "e"]}',  # too deep
    "x" * (MAX_POSITIONS_TEXT + 1),  # too long
    json.dumps({"all": [MAX_OFFSET + 1, "e"]}),  # an offset Lua cannot hold exactly
    json.dumps({"all": [1, "e" * 65]}), json.dumps({"all": [True, "e"]}),
])
def test_out_of_bounds_positions_are_refused(text: str) -> None:
    with pytest.raises(PositionsError):
        parse_positions(text)


def test_positions_within_bounds_parse() -> None:
    text = json.dumps({"all": [MAX_OFFSET, "e" * 64], "g:[x]": [0, "e"]})
    assert parse_positions(text) == {"all": (MAX_OFFSET, "e" * 64), "g:[x]": (0, "e")}


@pytest.mark.parametrize(("claimed", "baseline", "start"), [
    ((3, "e"), (7, "e"), (7, "e")),    # a claim from before the membership: its start
    ((9, "e"), (7, "e"), (9, "e")),    # after it: the claim
    ((2, "f"), (7, "e"), (2, "f")),    # another epoch: after it, or not held (reported)
    ((2, "f"), (0, ""), (2, "f")),     # the stream held nothing then: any epoch is later
    (None, (7, "e"), (7, "e")),
    ((3, "e"), None, (3, "e")),
    (None, None, None),
])
def test_a_replay_starts_no_earlier_than_the_baseline(
    claimed: tuple[int, str] | None, baseline: tuple[int, str] | None,
    start: tuple[int, str] | None,
) -> None:
    assert replay_start(claimed, baseline) == start


# ----------------------------------------------------------------------------- wire prefixes


def complete(prefix: bytes, *rest: object) -> Envelope:
    """Append what a Redis script appends (cmsgpack.pack of each value) and decode."""
    return decode(prefix + b"".join(msgpack.packb(item, use_bin_type=True) for item in rest))


@pytest.mark.parametrize("client_id", ["alice", "", "é\U0001f600", "x" * 300])
def test_a_kick_prefix_is_the_envelope_array_up_to_the_conn_id(client_id: str) -> None:
    """kick_prefix packs the node's part once; the bytes are those of the whole array."""
    fields = [WIRE_VERSION, int(Kind.KICK), "node-b", client_id, None, None]
    assert kick_prefix("node-b", client_id) == array_prefix(fields, 7)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("char", ["x", "é", "\U0001f600"])
def test_a_packed_str_is_what_msgpack_packs(size: int, char: str) -> None:
    """Each length class of msgpack's str formats (fixstr, str8, str16, str32), counted in
    UTF-8 bytes, not characters."""
    value = char * (size // len(char.encode()))
    assert pack_str(value) == msgpack.packb(value, use_bin_type=True)


def test_a_str_with_a_lone_surrogate_is_refused_as_msgpack_refuses_it() -> None:
    with pytest.raises(UnicodeEncodeError):
        msgpack.packb("a\udcff", use_bin_type=True)
    with pytest.raises(UnicodeEncodeError):
        pack_str("a\udcff")


def test_a_kick_prefix_completed_with_the_old_conn_id_decodes() -> None:
    kick = complete(kick_prefix("node-b", "alice"), "conn-7")
    assert (kick.kind, kick.origin, kick.target, kick.ref) == (Kind.KICK, "node-b", "alice",
                                                              "conn-7")
    assert kick.payload is None  # as an older node's: the replacement resumed, or may have


def test_a_fresh_kick_says_so_in_its_payload_and_is_an_ordinary_kick_otherwise() -> None:
    """An older node reads a KICK's target and ref only: the flag changes nothing there."""
    fields = [WIRE_VERSION, int(Kind.KICK), "node-b", "alice", FRESH, None]
    assert kick_prefix("node-b", "alice", fresh=True) == array_prefix(fields, 7)
    kick = complete(kick_prefix("node-b", "alice", fresh=True), "conn-7")
    assert (kick.kind, kick.target, kick.payload, kick.ref) == (Kind.KICK, "alice", FRESH,
                                                               "conn-7")


def test_an_event_prefix_completed_with_a_body_and_two_nils_decodes() -> None:
    event = ClusterEvent("join", "alice", "room", "node-a")
    got = complete(event_prefix("node-a"), event_body(event), None, None)
    assert (got.kind, got.origin) == (Kind.EVENT, "node-a")
    assert isinstance(got.payload, str)
    assert event_of(got.payload) == event


def test_a_sequenced_prefix_completed_with_offset_and_epoch_decodes() -> None:
    envelope = Envelope(Kind.GROUP, "node-a", "room", b"\x00bin", "alice")
    got = complete(sequenced_prefix(envelope), 42, "ep0ch")
    assert got == Envelope(Kind.GROUP, "node-a", "room", b"\x00bin", "alice", None, 42, "ep0ch")


@pytest.mark.parametrize("payload", ["not json", "[]", '{"event": "x"}', "null", "{",
                                     '{"client_id": "a", "node_id": "n"}'])
def test_a_malformed_event_body_is_a_wire_error(payload: str) -> None:
    with pytest.raises(WireError):
        event_of(payload)


# ----------------------------------------------------------------------------- schedule


class Key:
    """A hashable stand-in for a connection that can be weakly referenced."""


def test_a_forgotten_key_is_not_held_by_the_schedule() -> None:
    schedule: HeartbeatSchedule[Key] = HeartbeatSchedule(30.0, 60.0)
    key = Key()
    schedule.track(key, now=0.0)
    schedule.track(Key(), now=0.0)  # another entry keeps the heap non-empty
    ref = weakref.ref(key)
    schedule.forget(key)
    del key
    gc.collect()
    assert ref() is None


def test_stale_heap_items_are_swept_when_they_outnumber_live_ones() -> None:
    schedule: HeartbeatSchedule[int] = HeartbeatSchedule(30.0, 60.0)
    for key in range(1000):
        schedule.track(key, now=0.0)
    for key in range(1000):
        if key % 10:
            schedule.forget(key)
    assert len(schedule) == 100
    assert schedule.heap_size() <= max(64, 2 * len(schedule)) + 1
    pinged, _ = schedule.due(30.0)
    assert sorted(pinged) == list(range(0, 1000, 10))


def test_tracking_a_key_again_leaves_one_live_entry() -> None:
    schedule: HeartbeatSchedule[str] = HeartbeatSchedule(10.0, 20.0)
    schedule.track("a", now=0.0)
    schedule.track("a", now=5.0)
    pinged, _ = schedule.due(10.0)
    assert pinged == []
    pinged, _ = schedule.due(15.0)
    assert pinged == ["a"]


def test_a_missing_stream_was_lost_only_if_it_advanced_within_its_meta_ttl() -> None:
    order = StreamOrder()
    order.advance("all", 85, "e1", 1000.0)
    assert order.lost_if_absent("all", 1000.0 + 179.0, 180.0)  # too recent to have expired
    assert not order.lost_if_absent("all", 1000.0 + 180.0, 180.0)  # it may have expired
    order.start("g:room", 3, "e1")  # followed from a position: never advanced here
    assert not order.lost_if_absent("g:room", 1000.0, 180.0)
    assert not order.lost_if_absent("c:bob", 1000.0, 180.0)  # not followed at all
    order.start_over("all", "")  # the store lost it: whatever epoch comes next
    assert order.last("all") == (0, "")
    assert not order.lost_if_absent("all", 1001.0, 180.0)  # nothing delivered since
    assert order.classify("all", 1, "e2") is Step.DELIVER
