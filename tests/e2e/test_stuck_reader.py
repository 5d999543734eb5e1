"""A client that stops reading for good (its TCP window closed, a frame half written) is cut
off under every uvicorn WebSocket implementation: once its write or its heartbeat times
out, or the application disconnects it, the close frame cannot go out, and the transport
is aborted within close_timeout.

Under the legacy `websockets` implementation the send the writer had started was
abandoned without cancelling the drain it waited on (connection/stepping.py steps it by
hand, and a Task would have cancelled that future); the close then failed on the
library's own check of that future, the failure read as "peer gone", and the socket, its
handler and its send buffer stayed for as long as the peer kept TCP open."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from tests.e2e.test_prepared_frames import joined, make_app
from tests.integration.test_emitter import until
from tests.support.inproc_uvicorn import IMPLS, served

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
HEARTBEAT = {"heartbeat_interval": 0.5, "heartbeat_timeout": 0.5}
BIG = 8 << 20  # a frame no kernel buffer here takes whole


@pytest.mark.parametrize("trigger", ["write_timeout", "disconnect", "heartbeat"])
@pytest.mark.parametrize("ws", IMPLS)
async def test_a_client_that_stops_reading_is_aborted(
        ws: str, trigger: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: dict[str, Any] = HEARTBEAT if trigger == "heartbeat" else QUIET
    manager = WebSocketConnectionManager(WebSocketConfig(
        write_timeout=1.0 if trigger == "write_timeout" else 60.0, close_timeout=1.0,
        max_queue_size=100_000, max_message_size=2 * BIG, **settings))
    async with served(make_app(manager), ws, monkeypatch) as server:
        client = await joined(server, "stuck", receive_buffer=4096)  # and never reads again
        try:
            conn = manager.get_connection("stuck")
            assert conn is not None
            transport = conn.socket._receive.__self__.transport  # uvicorn's protocol's
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await manager.send_to_client("stuck", "x" * BIG)
            await manager.send_to_client("stuck", "after")  # waits behind the big one
            assert conn.writing
            if trigger == "disconnect":
                await manager.disconnect("stuck", code=4321, reason="bye")

            async def aborted() -> bool:
                return bool(transport.is_closing())

            await until(aborted, timeout=15.0)  # (a timeout, then close_timeout, then abort)
            assert manager.get_connection("stuck") is None
        finally:
            await client.aclose()
