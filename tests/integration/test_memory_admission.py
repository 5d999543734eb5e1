"""max_total_memory at admission: each connect measured every connection of the node, so a
reconnect storm of N clients cost N² estimates (5,000 connects took a minute of CPU). An
admission now reuses the node's total, measured at most every ADMISSION_TOTAL_MAX_AGE, plus
what was admitted since; the limit still holds."""

from __future__ import annotations

import pytest

from stabilizer import CloseCode, WebSocketConfig, WebSocketConnectionManager
from stabilizer.connection.connection import Connection
from stabilizer.services import memory
from tests.support.fakes import FakeSocket

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0}
METADATA = {"tags": ["t"] * 10}


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The guard's clock, standing still until a test moves it."""
    now = [1000.0]
    monkeypatch.setattr(memory, "monotonic", lambda: now[0])
    return now


async def test_a_storm_of_connects_measures_the_node_once_per_interval(
        frozen_clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    measured = 0
    estimate = Connection.memory_estimate

    def counted(self: Connection) -> int:
        nonlocal measured
        measured += 1
        return estimate(self)

    monkeypatch.setattr(Connection, "memory_estimate", counted)
    async with WebSocketConnectionManager(WebSocketConfig(max_total_memory=10**12,
                                                          **QUIET)) as manager:
        for index in range(300):
            await manager.connect(f"c{index}", FakeSocket(), metadata=METADATA)
        assert measured <= 2 * 300  # each newcomer once or twice; the node once at most
        frozen_clock[0] += memory.ADMISSION_TOTAL_MAX_AGE
        before = measured
        await manager.connect("later", FakeSocket(), metadata=METADATA)
        assert measured - before >= 300  # the interval passed: the node measured again


async def test_the_limit_holds_for_connects_between_two_measures(
        frozen_clock: list[float]) -> None:
    async with WebSocketConnectionManager(WebSocketConfig(**QUIET)) as scratch:
        await scratch.connect("c00", FakeSocket(), metadata=METADATA)
        size = int(scratch.get_memory_usage()["total_memory"])
    config = WebSocketConfig(max_total_memory=size * 10 + size // 2, **QUIET)
    async with WebSocketConnectionManager(config) as manager:
        sockets = [FakeSocket() for _ in range(11)]
        for index, socket in enumerate(sockets):
            await manager.connect(f"c{index:02d}", socket, metadata=METADATA)
        # the eleventh did not fit, though the node was not measured again in between: the
        # oldest (c00: no traffic) was evicted
        assert manager.get_connection_count() == 10
        assert (await sockets[0].wait_closed())[0] == CloseCode.MEMORY_EVICTED
