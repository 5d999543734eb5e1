"""Remote procedure calls, the parts without a socket: the frames both sides read and write,
the registry, and the answer to one call (docs/protocol.md 6.5)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from stabilizer import ConfigError, RPCCall, RPCError, WebSocketConfig, WebSocketConnectionManager
from stabilizer.pure.client_v2 import reply_outcome, rpc_frame
from stabilizer.pure.frames import reply_error_frame, reply_frame
from stabilizer.pure.v2 import MAX_CALL_ID, BadCallError, ProtocolError, is_method, parse_rpc
from stabilizer.services.rpc import Procedures


def call_of(method: str, params: Any = None) -> RPCCall:
    return RPCCall(method=method, params=params, client_id="alice/tab", user_id="alice",
                   conn_id="c1", metadata={})


@pytest.mark.parametrize("ident", [0, 1, MAX_CALL_ID, "a", "x" * 64])
def test_usable_call_ids(ident: int | str) -> None:
    request = parse_rpc({"type": "rpc", "id": ident, "method": "a.b:c/d-e_f"})
    assert (request.call_id, request.method, request.params) == (ident, "a.b:c/d-e_f", None)


@pytest.mark.parametrize("ident", [None, -1, MAX_CALL_ID + 1, 1.0, True, "", "x" * 65, [1],
                                   {"id": 1}])
def test_an_unusable_call_id_is_a_protocol_error_without_a_reply(ident: object) -> None:
    with pytest.raises(ProtocolError, match="rpc: id must be") as refused:
        parse_rpc({"type": "rpc", "id": ident, "method": "add"})
    assert not isinstance(refused.value, BadCallError)


@pytest.mark.parametrize("method", [None, "", "x" * 129, "a b", "é", 5, ["add"], "add\n"])
def test_a_bad_method_with_a_usable_id_is_answered_by_a_reply(method: object) -> None:
    with pytest.raises(BadCallError) as refused:
        parse_rpc({"type": "rpc", "id": 9, "method": method})
    assert refused.value.call_id == 9
    assert not is_method(method)


def test_params_may_be_any_json_value() -> None:
    for params in (None, 0, "text", [1, [2]], {"a": {"b": None}}, False):
        assert parse_rpc({"id": 1, "method": "m", "params": params}).params == params


def test_reply_frames_round_trip_through_the_clients_reading() -> None:
    assert json.loads(reply_frame(3, {"sum": 5})) == {"type": "reply", "id": 3,
                                                      "result": {"sum": 5}}
    assert reply_outcome(json.loads(reply_frame("k", None))) == ("k", None, None)
    ident, result, error = reply_outcome(json.loads(
        reply_error_frame(4, "forbidden", "no", {"why": 1})))
    assert (ident, result) == (4, None)
    assert error is not None
    assert (error.code, error.message, error.data) == ("forbidden", "no", {"why": 1})
    assert "data" not in json.loads(reply_error_frame(4, "x", "y"))["error"]
    with pytest.raises(ValueError, match="not JSON compliant"):
        reply_frame(1, float("inf"))
    with pytest.raises(TypeError):
        reply_frame(1, {1, 2})


@pytest.mark.parametrize("error", [5, {"code": 5}, {"code": ""}, {"message": "no code"}])
def test_a_malformed_error_in_a_reply_is_still_an_rpc_error(error: object) -> None:
    _, _, failure = reply_outcome({"type": "reply", "id": 1, "error": error})
    assert failure is not None
    assert failure.code == "bad_reply"


def test_the_clients_call_frame() -> None:
    assert json.loads(rpc_frame(1, "add", {"a": 1})) == {
        "type": "rpc", "id": 1, "method": "add", "params": {"a": 1}}
    assert "params" not in json.loads(rpc_frame(2, "ping", None))
    with pytest.raises(ValueError, match="method name"):
        rpc_frame(1, "two words", None)


def test_rpc_error_codes_are_short_strings() -> None:
    assert str(RPCError("forbidden", "no")) == "forbidden: no"
    assert str(RPCError("gone")) == "gone"
    for code in ("", "x" * 65, None):
        with pytest.raises(ValueError, match="RPCError code"):
            RPCError(code)  # type: ignore[arg-type]


def test_registering_checks_the_name_the_handler_and_duplicates() -> None:
    manager = WebSocketConnectionManager()

    @manager.rpc("sum")
    async def total(call: RPCCall) -> int:
        return sum(call.params)

    assert total.__name__ == "total"  # the decorator returns the function itself
    with pytest.raises(ConfigError, match="registered already"):
        manager.add_rpc("sum", total)
    with pytest.raises(ConfigError, match="1-128 characters"):
        manager.add_rpc("bad name", total)
    with pytest.raises(ConfigError, match="not callable"):
        manager.add_rpc("other", "total")  # type: ignore[arg-type]
    assert manager._node.sessions.procedures.names() == ["sum"]


@pytest.mark.parametrize(("name", "value"), [("rpc_timeout", 0), ("rpc_timeout", -1.0),
                                             ("rpc_max_in_flight", 0),
                                             ("rpc_max_in_flight", 1.5)])
def test_rpc_settings_are_validated(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        WebSocketConfig(**{name: value})


async def answer(procedures: Procedures, method: str, params: Any = None) -> dict[str, Any]:
    return dict(json.loads(await procedures.answer(1, call_of(method, params))))


async def test_every_outcome_of_a_call_is_a_reply_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(rpc_timeout=0.05))
    procedures = manager._node.sessions.procedures
    never = asyncio.Event()

    async def slow(call: RPCCall) -> None:
        await never.wait()

    async def own_timeout(call: RPCCall) -> None:
        raise TimeoutError("the procedure's own")

    async def bad_data(call: RPCCall) -> None:
        raise RPCError("odd", "data is a set", {1})

    for name, handler in (("echo", lambda call: call.params), ("slow", slow),
                          ("own_timeout", own_timeout), ("bad_data", bad_data)):
        procedures.register(name, handler)
    caplog.set_level(logging.WARNING, logger="stabilizer")
    assert await answer(procedures, "echo", [1]) == {"type": "reply", "id": 1, "result": [1]}
    assert (await answer(procedures, "slow"))["error"]["code"] == "timeout"
    assert "ran past rpc_timeout" in caplog.text
    assert (await answer(procedures, "own_timeout"))["error"]["code"] == "internal"
    assert (await answer(procedures, "bad_data"))["error"] == {"code": "odd",
                                                               "message": "data is a set"}
    assert (await answer(procedures, "missing"))["error"]["code"] == "unknown_method"
    assert (manager.stats.rpc_calls, manager.stats.rpc_failures) == (5, 4)


@pytest.mark.parametrize("exit_", [SystemExit(2), KeyboardInterrupt()])
async def test_a_procedure_that_exits_is_answered_as_internal_and_stops_nothing(
        exit_: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    # (argparse exits on bad arguments: a client's params must not end the replica's loop)
    manager = WebSocketConnectionManager(WebSocketConfig())
    procedures = manager._node.sessions.procedures

    async def exits(call: RPCCall) -> None:
        raise exit_

    procedures.register("exits", exits)
    caplog.set_level(logging.ERROR, logger="stabilizer")
    assert (await answer(procedures, "exits"))["error"]["code"] == "internal"
    assert "failed" in caplog.text
