"""Acknowledged sends on one embedded node whose client's connection ends before it
acknowledged (docs/protocol.md 6.7): without a session to resume, no copy of the message
reaches the client again, so the send is told at once, not at its timeout. (Across
replicas, and a session that stays resumable: tests/e2e/test_ack_gone.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stabilizer import AckTimeoutError, WebSocketConfig, WebSocketConnectionManager
from tests.unit.test_acks import as_v2

LONG = 3600.0  # an acknowledgement timeout the tests never wait out
QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}


@pytest.mark.parametrize("history", [0, 100], ids=["live", "history"])
async def test_a_send_fails_at_once_when_the_application_ends_its_clients_connection(
    history: int,
) -> None:
    config = WebSocketConfig(**QUIET, history_size=history, session_ttl=60.0)
    async with WebSocketConnectionManager(config) as manager:
        sock, _ = await as_v2(manager, "v2")
        asking = asyncio.create_task(manager.send_to_client("v2", "bye", ack=True,
                                                            timeout=LONG))
        assert (await sock.next_json())["data"] == "bye"
        await manager.disconnect("v2")  # 1000 from the server: with history, the session ends
        async with asyncio.timeout(10):
            with pytest.raises(AckTimeoutError, match="left without a session to resume"):
                await asking

