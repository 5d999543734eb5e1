"""The client's pure decisions for protocol v2: frames, close codes, options."""

from __future__ import annotations

import json

import pytest

from stabilizer.client import (
    CloseAction,
    HandshakeRejectedError,
    RetryPolicy,
    SessionInfo,
    close_action,
    connect,
    retry_delay,
)
from stabilizer.client.v2 import ProtocolV2
from stabilizer.errors import ConfigError, WireError
from stabilizer.pure.client_protocol import (
    MAX_RESUME_TEXT,
    Positions,
    message_payload,
)
from stabilizer.pure.client_v2 import (
    check_size,
    checked_token,
    connect_frame,
    outgoing,
    refresh_frame,
    require_v2,
    v2_frame,
)
from stabilizer.pure.v2 import parse_connect, refresh_token


def test_a_first_connect_frame_carries_only_what_the_client_has() -> None:
    assert json.loads(connect_frame(token=None, device=None)) == {"type": "connect"}
    frame = connect_frame(token="jwt", device="tab-1", params={"tenant": "acme"})
    assert json.loads(frame) == {"type": "connect", "token": "jwt", "device": "tab-1",
                                 "params": {"tenant": "acme"}}


def test_positions_go_only_with_a_reconnect_token() -> None:
    positions = {"all": (12, "hE3kQx"), "g:room 1": (3, "e")}
    resuming = json.loads(connect_frame(token="jwt", device="d", reconnect_token="s1.x",
                                        positions=positions))
    assert resuming["reconnect_token"] == "s1.x"
    assert resuming["positions"] == {"all": [12, "hE3kQx"], "g:room 1": [3, "e"]}
    fresh = json.loads(connect_frame(token="jwt", device="d", positions=positions))
    assert "positions" not in fresh
    assert "reconnect_token" not in fresh


def test_positions_and_channels_share_one_budget() -> None:
    """The channels a resume names fit, with its positions, in MAX_RESUME_TEXT bytes (as
    positions alone may): the names past it are left out. Before, only their count was
    bounded, and 1,000 long names made a frame a server's max_message_size refused."""
    positions = {f"g:{'p' * 200}{n:03d}": (1, "e") for n in range(100)}
    channels = sorted(f"room:{n:03d}:" + "é" * 240 for n in range(400))  # (2 bytes each)
    frame = connect_frame(token="jwt", device="d", reconnect_token="s1.x",
                          positions=positions, channels=channels)
    body = json.loads(frame)
    named = body["channels"]
    assert len(body["positions"]) == 100
    assert 0 < len(named) < len(channels)
    assert named == channels[:len(named)]  # the first, in the order given

    def size(value: object) -> int:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())

    used = size(body["positions"]) + size(named)
    assert used <= MAX_RESUME_TEXT < used + size(channels[len(named)]) + 1
    assert parse_connect(frame).channels == frozenset(named)
    full: dict[str, tuple[int, str]] = {}  # positions that leave under 20 bytes
    while size(full) < MAX_RESUME_TEXT - 20:
        full[f"g:{'p' * 250 if size(full) < MAX_RESUME_TEXT - 300 else ''}{len(full)}"] = (
            1, "e")
    assert size(full) <= MAX_RESUME_TEXT
    assert "channels" not in json.loads(connect_frame(
        token=None, device="d", reconnect_token="s1.x", positions=full,
        channels=["r" * 30]))
    assert json.loads(connect_frame(token=None, device="d", reconnect_token="s1.x",
                                    channels=["b", "a"]))["channels"] == ["b", "a"]


def test_the_server_reads_the_frames_the_client_writes() -> None:
    """What connect_frame and refresh_frame produce is what the server's parser accepts."""
    text = connect_frame(token="jwt", device="tab-1", reconnect_token="s1.x",
                         positions={"all": (1, "e")}, params={"k": [1, 2]})
    request = parse_connect(text)
    assert (request.token, request.device, request.reconnect_token) == ("jwt", "tab-1", "s1.x")
    assert request.positions == {"all": (1, "e")}
    assert request.params == {"k": [1, 2]}
    assert refresh_token(json.loads(refresh_frame("fresh"))) == "fresh"


def test_v2_wraps_application_text_and_leaves_binary_and_plain_alone() -> None:
    assert json.loads(outgoing('{"type":"pong"}', 2)) == {"type": "message",
                                                           "data": '{"type":"pong"}'}
    assert outgoing(b"\x00", 2) == b"\x00"
    assert outgoing('{"type":"pong"}', 1) == '{"type":"pong"}'


@pytest.mark.parametrize(("text", "expected"), [
    ('{"type":"message","data":"hi"}', {"type": "message", "data": "hi"}),
    ('{"type":"refresh","expires_at":1.5}', {"type": "refresh", "expires_at": 1.5}),
    ('{"type":"something-new"}', {"type": "something-new"}),  # handled as unknown, not data
    ("pong", None),
    ('{"type": 7}', None),
    ('["type"]', None),
    ("{" * 100_000, None),  # a hostile server cannot crash the client's parser
])
def test_every_v2_text_frame_is_an_object_with_a_type(
    text: str, expected: dict[str, object] | None
) -> None:
    assert v2_frame(text) == expected


def test_an_unsequenced_message_gives_its_data_or_its_bytes() -> None:
    assert message_payload({"type": "message", "data": "hi"}) == "hi"
    assert message_payload({"type": "message", "data_b64": "AP8="}) == b"\x00\xff"
    for bad in ({"type": "message"}, {"type": "message", "data": 1},
                {"type": "message", "data_b64": "***"}):
        with pytest.raises(WireError):
            message_payload(bad)


def test_session_frames_of_both_versions_are_read() -> None:
    v2 = SessionInfo.from_frame({
        "type": "session", "protocol": 2, "client_id": "alice/tab", "device": "tab",
        "user_id": "alice", "conn_id": "c", "node_id": "n", "resumed": True, "token": "s1",
        "heartbeat_interval": 30, "history": False, "expires_at": 1795482348})
    assert (v2.protocol, v2.device, v2.user_id, v2.expires_at) == (2, "tab", "alice",
                                                                   1795482348.0)
    anonymous = SessionInfo.from_frame({"type": "session", "protocol": 2, "user_id": None,
                                        "expires_at": None, "device": "d"})
    assert (anonymous.user_id, anonymous.expires_at) == (None, None)
    plain = SessionInfo.from_frame({"type": "session", "client_id": "alice", "token": "s1"})
    assert (plain.protocol, plain.device, plain.user_id, plain.expires_at) == (
        1, None, None, None)
    odd = SessionInfo.from_frame({"protocol": True, "expires_at": True, "user_id": 5})
    assert (odd.protocol, odd.expires_at, odd.user_id) == (1, None, None)


@pytest.mark.parametrize(("code", "action"), [
    (4003, CloseAction.RETRY),  # credentials expired: reconnect, get_token asked again
    (4004, CloseAction.RETRY),  # the user's limit: after the advice
    (4505, CloseAction.STOP),   # credentials refused: final
])
def test_v2_close_codes(code: int, action: CloseAction) -> None:
    assert close_action(code, used_token=True) is action
    assert close_action(code, used_token=False) is action


def test_the_user_limit_waits_for_the_servers_advice() -> None:
    policy = RetryPolicy(base=0.001, cap=0.001)
    assert retry_delay(policy, 0, 4004, '{"retry_ms": 1500}') == 1.5
    assert retry_delay(policy, 0, 4003, '{"retry_ms": 1500}') <= 0.001  # backoff only


def test_a_server_that_does_not_choose_v2_is_refused_clearly() -> None:
    require_v2("stabilizer.v2", "ws://h/ws")
    for chosen in (None, "other"):
        with pytest.raises(HandshakeRejectedError, match="does not speak stabilizer protocol"):
            require_v2(chosen, "ws://h/ws")


def test_get_token_must_give_a_token_or_none() -> None:
    assert checked_token("jwt") == "jwt"
    assert checked_token(None) is None
    for bad in ("", b"jwt", 42):
        with pytest.raises(TypeError):
            checked_token(bad)


@pytest.mark.parametrize("options", [
    {"protocol": 3},
    {"protocol": True},
    {"get_token": lambda: "jwt"},              # v2 options without protocol=2
    {"device": "tab-1"},
    {"params": {"a": 1}},
    {"protocol": 2, "get_token": "jwt"},       # not callable
    {"protocol": 2, "device": "has/slash"},
    {"protocol": 2, "device": "x" * 65},
    {"protocol": 2, "device": ""},
    {"protocol": 2, "params": ["a"]},
    {"protocol": 2, "welcome": False},
])
def test_connect_refuses_v2_options_that_do_not_fit(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        connect("ws://h/ws", **options)  # type: ignore[arg-type]  # deliberately wrong


def test_connect_accepts_v2_options() -> None:
    conn = connect("ws://h/ws", protocol=2, get_token=lambda: None, device="Tab_1.~-",
                   params={"a": 1})
    assert (conn.protocol, conn.device, conn.user_id, conn.expires_at) == (
        2, "Tab_1.~-", None, None)
    plain = connect("ws://h/ws")
    assert (plain.protocol, plain.device) == (1, None)


def test_a_resume_names_only_the_channels_its_positions_do_not_hold() -> None:
    """The server counts a channel whose g: position a resume sends as held: naming it
    spent the budget for nothing, and (names sorted) the channels without a position,
    whose leave while away only their name tells, were the ones left out. Their
    "unsubscribed" notice was lost and a presence channel was joined again."""
    busy = [f"room-{n:03d}-" + "x" * 246 for n in range(120)]
    quiet = [f"zz-{n}-" + "x" * 246 for n in range(8)]
    positions = {f"g:{channel}": (1, "AbCdEfGh") for channel in busy}
    positions["c:someone"] = (1, "AbCdEfGh")
    frame = connect_frame(token=None, device="d", reconnect_token="s1.x",
                          positions=positions, channels=sorted([*busy, *quiet]))
    body = json.loads(frame)
    assert len(body["positions"]) == 121
    assert body["channels"] == quiet
    # without positions (none recorded, or over the budget) every channel is named
    assert json.loads(connect_frame(token=None, device="d", reconnect_token="s1.x",
                                    channels=["a", "b"]))["channels"] == ["a", "b"]
    # a position alone names no channel
    assert "channels" not in json.loads(connect_frame(
        token=None, device="d", reconnect_token="s1.x", positions={"g:a": (1, "e")},
        channels=["a"]))


def test_the_resume_budget_counts_utf8_bytes() -> None:
    """Positions were measured in characters and names in bytes: with non-ASCII group
    names a resume frame took about 2.7 times MAX_RESUME_TEXT bytes, and a server whose
    max_message_size left room for the documented budget closed it with 1009 (final)."""
    channels = [f"{n:03d}" + "中" * 247 for n in range(230)]
    positions = Positions()
    for channel in channels:
        positions.accept(f"g:{channel}", 1, "AbCdEfGh")
    assert positions.encode() is None  # ~173 KB of UTF-8 (~58,000 characters)
    assert positions.to_resume() == {}
    frame = connect_frame(token=None, device="d", reconnect_token="s1.x",
                          positions=positions.to_resume(), channels=channels)
    body = json.loads(frame)
    assert "positions" not in body
    assert 0 < len(body["channels"]) < len(channels)
    assert len(json.dumps(body["channels"], separators=(",", ":"),
                          ensure_ascii=False).encode()) <= MAX_RESUME_TEXT
    few = Positions()
    few.accept("g:" + "中" * 200, 1, "e")
    assert few.encode() is not None


@pytest.mark.parametrize(("value", "read"), [
    (4096, 4096), (1, 1), (None, None), (0, None), (-4096, None), (4096.0, None),
    ("4096", None), (True, None), ([4096], None), ({"bytes": 4096}, None)])
def test_a_session_frame_gives_the_servers_limit_only_as_a_positive_integer(
        value: object, read: int | None) -> None:
    info = SessionInfo.from_frame({"type": "session", "protocol": 2,
                                   "max_message_size": value})
    assert info.max_message_size == read
    assert SessionInfo.from_frame({"type": "session"}).max_message_size is None


def _bytes(text: str) -> int:
    return len(text.encode())


def test_a_resume_fits_the_max_message_size_the_server_stated() -> None:
    """Positions and channels fit what the rest of the frame (tokens, device, params)
    leaves under the server's limit: the channels named are the first that fit, and no
    more would. Before, only MAX_RESUME_TEXT bounded them, over a limit of 4,096 bytes:
    1009, final for the client."""
    positions = {f"g:busy-{n}": (n, "AbCdEfGh") for n in range(10)}
    channels = [f"room-{n:02d}-" + "é" * 60 for n in range(80)]

    def resuming(max_size: int | None) -> str:
        return connect_frame(token="j" * 700, device="tab-1", reconnect_token="s1." + "r" * 300,
                             positions=positions, params={"tenant": "ünï"}, channels=channels,
                             max_size=max_size)

    frame = resuming(4096)
    body = json.loads(frame)
    assert _bytes(frame) <= 4096
    assert len(body["positions"]) == len(positions)
    named = body["channels"]
    assert 0 < len(named) < len(channels)
    assert named == channels[:len(named)]
    one_more = body | {"channels": channels[:len(named) + 1]}
    assert _bytes(json.dumps(one_more, separators=(",", ":"), ensure_ascii=False)) > 4096
    assert parse_connect(frame).channels == frozenset(named)
    # no limit stated (an older server): MAX_RESUME_TEXT alone, as before
    assert json.loads(resuming(None))["channels"] == channels
    # a limit over MAX_RESUME_TEXT and the rest changes nothing
    assert resuming(2**40) == resuming(None)


def test_positions_over_the_servers_limit_stay_home_and_channels_take_the_room() -> None:
    """As with positions over MAX_RESUME_TEXT: none go (the server replays from the
    session's start), and the channels they would have held are named while they fit."""
    positions = {f"g:room-{n:02d}-" + "x" * 110: (1, "AbCdEfGh") for n in range(40)}
    channels = sorted(stream[2:] for stream in positions)
    frame = connect_frame(token=None, device="d", reconnect_token="s1.x",
                          positions=positions, channels=channels, max_size=4096)
    body = json.loads(frame)
    assert _bytes(frame) <= 4096
    assert "positions" not in body
    assert body["channels"] == channels[:len(body["channels"])]
    assert 20 < len(body["channels"]) < len(channels)
    # a limit that leaves nothing for them: the frame goes without them
    tight = connect_frame(token="t" * 5000, device="d", reconnect_token="s1.x",
                          positions=positions, channels=channels, max_size=4096)
    assert json.loads(tight) == {"type": "connect", "token": "t" * 5000,
                                 "reconnect_token": "s1.x", "device": "d"}


def test_a_client_keeps_the_limit_of_the_last_session_frame_and_ignores_a_bad_one() -> None:
    """A value that is not a positive integer, or none at all (an older server), leaves the
    resume at MAX_RESUME_TEXT."""
    v2 = ProtocolV2(None, device="d", params=None, timeout=1.0)
    channels = [f"room-{n:02d}-" + "x" * 110 for n in range(40)]

    def named() -> list[str]:
        body = json.loads(connect_frame(token=None, device=v2.device, reconnect_token="s1.x",
                                        channels=channels, max_size=v2.max_message_size))
        return list(body["channels"])

    for value, limit in ((4096, 4096), ("4096", None), (-1, None), (4096, 4096),
                         (None, None)):
        v2.on_session(SessionInfo.from_frame({"type": "session", "protocol": 2,
                                              "max_message_size": value}))
        assert v2.max_message_size == limit
        assert named() == channels if limit is None else len(named()) < len(channels)


def test_a_frame_is_measured_in_utf8_bytes_against_the_servers_limit() -> None:
    check_size("é" * 50, 100)  # 100 bytes: at the limit
    check_size(b"\x00" * 100, 100)
    check_size("x" * 10**6, None)  # (a server that states no limit)
    with pytest.raises(ValueError, match=r"101 bytes.*max_message_size \(100 bytes\)"):
        check_size("é" * 50 + "x", 100)
    with pytest.raises(ValueError, match="101 bytes"):
        check_size(b"\x00" * 101, 100)
