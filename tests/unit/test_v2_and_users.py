"""Protocol v2's client frames and the user rules (pure): every client-supplied value is
checked, and each refusal names its problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stabilizer.auth.identity import Identity
from stabilizer.connection.sockets import Frame
from stabilizer.errors import AuthenticationError
from stabilizer.pure.frames import app_message_frame, refresh_frame, refreshed_frame
from stabilizer.pure.users import (
    MAX_INFO_BYTES,
    check_user_id,
    client_id_of,
    info_json,
    is_device,
    new_device,
    parse_info,
)
from stabilizer.pure.v2 import (
    SUBPROTOCOL,
    ProtocolError,
    client_frame,
    message_data,
    offered,
    parse_connect,
    refresh_token,
)


def test_a_full_connect_frame_is_read() -> None:
    request = parse_connect(json.dumps({
        "type": "connect", "token": "jwt", "reconnect_token": "s1.x",
        "positions": {"all": [3, "ep"]}, "device": "tab-1", "params": {"room": "a"},
        "future_field": 1}))
    assert request.token == "jwt"
    assert request.reconnect_token == "s1.x"
    assert request.positions == {"all": (3, "ep")}
    assert request.device == "tab-1"
    assert request.params == {"room": "a"}


def test_a_bare_connect_frame_is_anonymous() -> None:
    request = parse_connect('{"type":"connect"}')
    assert (request.token, request.reconnect_token, request.device) == (None, None, None)
    assert request.positions == {}
    assert request.params == {}


@pytest.mark.parametrize(("text", "problem"), [
    ("", "JSON object"),
    ("hello", "JSON object"),
    ("[1,2]", "JSON object"),
    ('{"type": 1}', '"type"'),
    ('{"no_type": true}', '"type"'),
    ('{"type":"message","data":"x"}', "first frame must be connect"),
    ('{"type":"connect","token":5}', "token"),
    ('{"type":"connect","token":""}', "token"),
    ('{"type":"connect","token":"' + "x" * 20000 + '"}', "token"),
    ('{"type":"connect","reconnect_token":[]}', "reconnect_token"),
    ('{"type":"connect","device":"a/b"}', "device"),
    ('{"type":"connect","device":""}', "device"),
    ('{"type":"connect","device":"' + "d" * 65 + '"}', "device"),
    ('{"type":"connect","device":7}', "device"),
    ('{"type":"connect","params":[1]}', "params"),
    ('{"type":"connect","positions":{"all":[1]}}', "position"),
    ('{"type":"connect","positions":"all"}', "positions"),
    ('{"type":"connect","params":' + "[" * 5000 + "]" * 5000 + "}", "nested"),
    ('{"type":"connect"', "JSON object"),
])
def test_a_bad_connect_frame_is_refused_with_its_problem(text: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_connect(text)


def test_client_frames_and_their_fields() -> None:
    assert client_frame('{"type":"ping"}') == ("ping", {"type": "ping"})
    _, body = client_frame('{"type":"message","data":"hi"}')
    assert message_data(body) == "hi"
    with pytest.raises(ProtocolError, match="data"):
        message_data({"type": "message", "data": {"x": 1}})
    assert refresh_token({"token": "t"}) == "t"
    for bad in ({}, {"token": None}, {"token": 3}, {"token": ""}):
        with pytest.raises(ProtocolError, match="token"):
            refresh_token(bad)


def test_the_subprotocol_is_offered_only_by_name() -> None:
    assert offered([SUBPROTOCOL])
    assert offered(["other", SUBPROTOCOL])
    assert not offered(["stabilizer.v3"])
    assert not offered(SUBPROTOCOL)  # a string is not a list of offers
    assert not offered(None)


@pytest.mark.parametrize("user", ["ann", "a" * 256, "ünïcode", "a|b", "a/b", "1"])
def test_usable_user_ids(user: str) -> None:
    assert check_user_id(user) == user


@pytest.mark.parametrize("user", ["", "a" * 257, None, 5, "\ud800"])
def test_unusable_user_ids(user: object) -> None:
    with pytest.raises(AuthenticationError):
        check_user_id(user)


def test_info_is_compact_bounded_json_and_parses_back() -> None:
    assert info_json(None) == ""
    assert info_json({"name": "Ann", "n": 1}) == '{"name":"Ann","n":1}'
    assert parse_info(info_json({"name": "Ann"})) == {"name": "Ann"}
    assert parse_info("") is None
    assert parse_info("[1]") is None
    assert parse_info("not json") is None
    with pytest.raises(AuthenticationError, match="bytes"):
        info_json({"blob": "x" * MAX_INFO_BYTES})
    with pytest.raises(AuthenticationError, match="JSON"):
        info_json({"x": float("nan")})
    with pytest.raises(AuthenticationError, match="object"):
        info_json(["a"])  # type: ignore[arg-type]  # a caller that ignores the types


@pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), float("-inf"), "5", True])
def test_an_identity_expires_at_finite_unix_seconds_or_never(expires_at: Any) -> None:
    """NaN made the session frame invalid JSON ("expires_at":NaN) and never expired; inf
    never expired either."""
    with pytest.raises(AuthenticationError, match="expires_at"):
        Identity("ann", expires_at=expires_at)
    assert Identity("ann", expires_at=5).expires_at == 5
    assert Identity("ann").expires_at is None


@pytest.mark.parametrize("info", [
    pytest.param({"name": "\ud800"}, id="value"),
    pytest.param({"\udcff": 1}, id="key"),
    pytest.param({"nested": ["ok", {"deep": "x\ud83d"}]}, id="nested"),
])
def test_info_with_text_utf8_cannot_encode_is_refused(info: dict[str, Any]) -> None:
    """A lone surrogate (JSON allows "\\ud800") could not be stored: every Redis command
    carrying it would fail, and with it the other connects of its batch."""
    with pytest.raises(AuthenticationError, match="Unicode"):
        info_json(info)
    with pytest.raises(AuthenticationError):
        Identity("ann", info)


def test_a_binary_message_to_a_group_is_wrapped_once_for_v2_naming_its_channel() -> None:
    frame = Frame.of(b"\x00\x01")
    frame.channel = "room"  # (as the fan-out to the group's members sets it)
    wrapped = frame.wrapped()
    assert json.loads(wrapped.message["text"]) == {"type": "message", "channel": "room",
                                                   "data_b64": "AAE="}
    assert frame.wrapped() is wrapped  # built once, shared by every v2 recipient
    assert frame.message == {"type": "websocket.send", "bytes": b"\x00\x01"}  # v1: plain
    acked = Frame.of(b"\x02").asking_ack("t")
    assert json.loads(acked.wrapped().message["text"]) == {"type": "message",
                                                           "data_b64": "Ag==", "ack": "t"}


def test_devices_and_the_client_ids_they_make() -> None:
    assert is_device(new_device())
    assert new_device() != new_device()
    for good in ("tab-1", "A.b_c~d", "x" * 64):
        assert is_device(good)
    for bad in ("", "a/b", "a b", "ü", "x" * 65, None, 3):
        assert not is_device(bad)
    assert client_id_of(None, "tab-1") == "tab-1"
    assert client_id_of("ann", "tab-1") == "ann/tab-1"
    # a device never holds "/": the last "/" splits user and device, so users cannot
    # collide: "a/b" + "c" and "a" + "b/c" (refused as a device) differ
    assert client_id_of("a/b", "c").rpartition("/") == ("a/b", "/", "c")


def test_app_text_is_wrapped_once_for_v2_and_control_frames_are_not() -> None:
    app = Frame.of("hello")
    wrapped = app.wrapped()
    assert json.loads(wrapped.message["text"]) == {"type": "message", "data": "hello"}
    assert app.wrapped() is wrapped  # built once, shared by every v2 recipient
    control = Frame.text(refresh_frame(5.0))
    assert control.wrapped() is control
    binary = Frame.of(b"\x00\x01")
    assert binary.wrapped() is binary  # a direct binary message is unambiguous as it is
    assert json.loads(refreshed_frame(None)) == {"type": "refreshed", "expires_at": None}
    assert json.loads(app_message_frame('{"type":"ping"}')) == {
        "type": "message", "data": '{"type":"ping"}'}
