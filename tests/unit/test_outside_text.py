"""Text from outside the node that no frame could carry on, or that the parser would choke
on: lone surrogates, NaN and Infinity, nesting without end, numbers out of every range.
Each is refused where it comes in, with a clear error, and never reaches a socket."""

from __future__ import annotations

import json

import pytest

from stabilizer import WebSocketConfig
from stabilizer.backends.records import NodeReport
from stabilizer.backends.redis.keys import parse_entry as parse_presence_entry
from stabilizer.backends.redis.keys import parse_seat
from stabilizer.connection.sockets import Frame
from stabilizer.errors import ConfigError, WireError
from stabilizer.pure.client_protocol import control_frame
from stabilizer.pure.frames import error_frame, reply_error_frame, reply_frame
from stabilizer.pure.json_input import JSONInputError, encodable, loads
from stabilizer.pure.positions import PositionsError, parse_positions
from stabilizer.pure.presence import encode_meta, parse_entry
from stabilizer.pure.text import check_close_code, encode_message
from stabilizer.pure.users import parse_info
from stabilizer.pure.v2 import ProtocolError, client_frame, parse_connect, refresh_token
from stabilizer.pure.wire import close_body, close_of, event_of

LONE = "\ud800"


@pytest.mark.parametrize("text", [
    '{"a":"\\ud800"}', '{"\\udfff":1}', '[["x\\uDC00y"]]', '{"a":"\\ud83d"}',
    '{"a":"\\ude00\\ud83d"}',  # the two halves in the wrong order are two lone ones
])
def test_a_lone_surrogate_escape_is_refused(text: str) -> None:
    with pytest.raises(JSONInputError, match="lone surrogate"):
        loads(text, 4)


@pytest.mark.parametrize("text", [
    '{"a":"\\ud83d\\ude00"}',  # a whole pair is one character
    '{"a":"\\\\ud800"}',  # an escaped backslash, then the letters "ud800"
    '{"a":"caf\\u00e9"}',
])
def test_text_that_encodes_is_accepted(text: str) -> None:
    value = loads(text, 4)
    assert encodable(value)
    assert value == json.loads(text)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    with pytest.raises(JSONInputError, match="no JSON number"):
        loads(f'{{"a":{constant}}}', 4)


@pytest.mark.parametrize("number", ["1e999", "-1e400", "1.5E+309", "1" + "0" * 400 + ".0"])
def test_numbers_too_large_for_a_float_are_refused(number: str) -> None:
    """The parser made them infinite: as NaN and Infinity, nothing of ours writes them back
    (a reply holding one failed as `internal`, and a hook saw inf)."""
    with pytest.raises(JSONInputError, match="too large for a float"):
        loads(f'{{"a":[{number}]}}', 4)


def test_numbers_a_float_holds_are_accepted() -> None:
    assert loads("[1.7976931348623157e308, -2.5e-3, 1e-999, 10]", 2) == [
        1.7976931348623157e308, -0.0025, 0.0, 10]


def test_nesting_beyond_the_bound_is_refused_before_the_parser_recurses() -> None:
    with pytest.raises(JSONInputError, match="nested more than 2 deep"):
        loads("[[[1]]]", 2)
    with pytest.raises(JSONInputError):  # the parser alone would raise RecursionError
        loads("[" * 100_000, 64)
    assert loads("[[1]]", 2) == [[1]]


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(JSONInputError, match="not UTF-8"):
        loads(b'{"a":"\xff"}', 4)
    assert loads(b'{"a":1}', 4) == {"a": 1}


@pytest.mark.parametrize("frame", [
    '{"type":"publish","id":1,"channel":"room","data":"hi \\ud800"}',
    '{"type":"publish","id":1,"channel":"room","data":{"\\udcff":1}}',
    '{"type":"message","data":"hello \\ud800"}',
    '{"type":"rpc","id":"\\ud800","method":"echo"}',
    '{"type":"rpc","id":1,"method":"echo","params":"\\ud800"}',
    '{"type":"publish","id":1,"channel":"room","data":{"x":NaN}}',
    '{"type":"rpc","id":1,"method":"echo","params":[Infinity]}',
    '{"type":"rpc","id":1,"method":"echo","params":[1e999]}',
    '{"type":"subscribe","id":1,"channel":"room","params":{"seat":-1e400}}',
    '{"type":"publish","id":1,"channel":"room","data":{"x":1E+999}}',
])
def test_a_v2_frame_holding_what_no_frame_could_carry_on_is_a_bad_frame(frame: str) -> None:
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        client_frame(frame)


def test_a_v2_connect_with_a_lone_surrogate_in_its_positions_is_refused() -> None:
    frame = '{"type":"connect","reconnect_token":"t","positions":{"x\\ud800":[0,"e"]}}'
    with pytest.raises(ProtocolError):
        parse_connect(frame)


@pytest.mark.parametrize("params", ['{"n":1e999}', '[-1e400]', '{"n":NaN}'])
def test_a_v2_connect_with_params_no_frame_could_carry_is_refused(params: str) -> None:
    """Section 6.1: such a connect frame is closed with 1008."""
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        parse_connect('{"type":"connect","params":' + params + "}")


def test_v2_positions_are_held_to_the_64_kib_of_the_query_parameter() -> None:
    """Section 6.1: a connect frame's positions follow the plain parameter's limits."""
    positions = {f"g:{i:04d}" + "x" * 900: [1, "e"] for i in range(100)}
    frame = json.dumps({"type": "connect", "reconnect_token": "t", "positions": positions})
    with pytest.raises(ProtocolError, match="longer than 65536"):
        parse_connect(frame)
    small = {f"g:{i}": [1, "e"] for i in range(100)}
    parsed = parse_connect(json.dumps({"type": "connect", "reconnect_token": "t",
                                       "positions": small}))
    assert len(parsed.positions) == 100


def test_query_positions_with_a_lone_surrogate_are_refused() -> None:
    with pytest.raises(PositionsError, match="lone surrogate"):
        parse_positions('{"g:a\\ud800":[1,"e"]}')
    with pytest.raises(PositionsError, match="no JSON number"):
        parse_positions('{"g:a":[NaN,"e"]}')
    with pytest.raises(PositionsError, match="too large for a float"):
        parse_positions('{"g:a":[1e999,"e"]}')


def test_a_refresh_with_a_bad_token_names_the_refresh_frame() -> None:
    with pytest.raises(ProtocolError, match=r"^refresh: token"):
        refresh_token({"type": "refresh", "token": 5})


@pytest.mark.parametrize("message", [
    f"hi {LONE}", {"text": f"hi {LONE}"}, [LONE], {LONE: 1},
])
def test_an_application_message_no_frame_can_carry_is_refused_once_to_its_sender(
        message: object) -> None:
    with pytest.raises(TypeError, match="lone surrogate"):
        encode_message(message)
    assert encode_message("café ☕") == "café ☕"


def test_a_text_frame_is_never_built_of_text_utf8_cannot_encode() -> None:
    with pytest.raises(UnicodeEncodeError):
        Frame.text(f"x{LONE}")
    assert Frame.text("é").size == 2


def test_a_reply_whose_result_utf8_cannot_encode_raises_for_the_internal_error() -> None:
    with pytest.raises(UnicodeEncodeError, match="surrogate"):
        reply_frame(1, {"name": LONE})
    assert json.loads(reply_frame(1, {"name": "é"}))["result"] == {"name": "é"}


def test_error_frames_carry_whatever_text_they_quote() -> None:
    """An application's RPCError message, or a detail quoting a client: ASCII JSON, which
    any socket takes."""
    for text in (reply_error_frame(1, "oops", f"bad {LONE}", {"why": LONE}),
                 error_frame("bad_frame", f"quoted {LONE}")):
        assert text.isascii()
        Frame.text(text)
    assert json.loads(reply_error_frame(2, "c", "é"))["error"]["message"] == "é"
    with pytest.raises(ValueError, match="JSON compliant"):  # the caller sends it without
        reply_error_frame(1, "c", "m", {"x": float("nan")})


@pytest.mark.parametrize("payload", [
    '{"code":' + "[" * 100_000 + "}",
    '{"code":1005,"reason":"x"}', '{"code":2000,"reason":"x"}', '{"code":999,"reason":"x"}',
    '{"code":4000,"reason":"\\ud800"}', '{"code":4000,"reason":5}', '{"code":true,"reason":""}',
])
def test_a_close_request_no_sender_could_have_made_is_a_wire_error(payload: str) -> None:
    with pytest.raises(WireError, match="malformed close request"):
        close_of(payload)


def test_the_close_codes_a_receiver_takes_are_those_a_sender_may_send() -> None:
    for code in (1000, 1001, 1008, 1011, 1012, 1013, 3000, 4999):
        assert close_of(close_body(code, "r")) == (code, "r")
        assert check_close_code(code) == code
    for code in (1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError, match="close code must be"):
            check_close_code(code)


def test_a_cluster_event_nested_without_end_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        event_of('{"event":' + "[" * 100_000)


def test_stored_presence_that_cannot_be_read_is_malformed_not_an_exception() -> None:
    deep = '{"c":"a","u":null,"m":' + '{"x":' * 5000 + "1" + "}" * 5001
    assert parse_entry(deep) is None
    assert parse_entry('{"c":"a","u":null,"m":{"x":"\\ud800"}}') is None
    assert parse_entry('{"c":"a","u":null,"m":{"x":1}}') is not None
    assert parse_presence_entry("bob", "node-x|c1|" + "9" * 400) is None
    assert parse_seat("u", "bob", "node-x|c1|" + "9" * 400 + "|{}") is None
    assert parse_info("[" * 5000) is None
    assert NodeReport.from_json("[" * 100_000) is None


def test_presence_metadata_that_would_not_read_back_is_refused_when_set() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_meta({"name": LONE})
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(40):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    with pytest.raises(ValueError, match="deeper than 32"):
        encode_meta(deep)
    meta = encode_meta({"name": "é", "tags": [[1]]})
    assert parse_entry('{"c":"a","u":null,"m":' + meta + "}") is not None


@pytest.mark.parametrize("name", ["history_ttl", "session_ttl", "node_ttl", "op_timeout",
                                  "heartbeat_interval", "rpc_timeout"])
def test_a_duration_too_long_for_redis_or_a_timer_is_refused_at_construction(
        name: str) -> None:
    with pytest.raises(ConfigError, match="100 years"):
        WebSocketConfig(**{name: 1e16})  # type: ignore[arg-type]


def test_the_python_client_takes_a_server_frame_nested_past_the_parser_for_text() -> None:
    """What a (hostile or broken) server sends cannot stop the client's reading loop."""
    assert control_frame('{"type":' + "[" * 100_000, history=False) is None


def test_max_channels_per_connection_is_128_by_default_and_validated() -> None:
    assert WebSocketConfig().max_channels_per_connection == 128
    assert WebSocketConfig(max_channels_per_connection=None).max_channels_per_connection is None
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ConfigError, match="max_channels_per_connection"):
            WebSocketConfig(max_channels_per_connection=bad)  # type: ignore[arg-type]
