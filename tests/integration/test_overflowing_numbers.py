"""JSON numbers too large for a float (``1e999``, ``-1e400``) from a v2 client, over real
sockets: refused as NaN and Infinity are, as a `bad_frame` (a connect frame: closed with
1008). Before, the parser made them infinite: an rpc echoing its params failed as
`internal` with an error in the log, a subscribe's hook saw inf, and a connect frame with
such params was accepted."""

from __future__ import annotations

import json
import logging

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from stabilizer import SubscribeRequest, WebSocketConfig
from tests.integration.test_hostile_text import call, chat_server, v2_client


@pytest.mark.parametrize("frame", [
    '{"type":"rpc","id":1,"method":"echo","params":[1e999]}',
    '{"type":"subscribe","id":1,"channel":"room","params":{"seat":-1e400}}',
    '{"type":"publish","id":1,"channel":"room","data":{"x":1E+999}}',
])
async def test_a_frame_holding_a_number_too_large_for_a_float_is_a_bad_frame(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch, frame: str,
        caplog: pytest.LogCaptureFixture) -> None:
    asked: list[SubscribeRequest] = []

    def verdict(request: SubscribeRequest) -> bool:
        asked.append(request)
        return True

    async with chat_server(config, monkeypatch, verdict) as (url, _manager, _relayed):
        ws = await v2_client(url, "sender")
        refused = await call(ws, frame)
        assert (refused["type"], refused["code"]) == ("error", "bad_frame")
        assert "too large for a float" in refused["detail"]
        ok = await call(ws, '{"type":"rpc","id":2,"method":"echo","params":1.5e300}')
        assert ok == {"type": "reply", "id": 2, "result": 1.5e300}
        await ws.close()
    assert asked == []  # the hook never saw the frame
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_connect_frame_with_such_params_is_closed_with_1008(
        config: WebSocketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chat_server(config, monkeypatch) as (url, manager, _relayed):
        ws = await websockets.connect(url, subprotocols=["stabilizer.v2"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "device": "d"})[:-1]
                      + ',"params":{"n":1e999}}')
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert manager.get_connection("d") is None
