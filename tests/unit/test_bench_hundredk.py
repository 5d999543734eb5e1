"""The 100k harness: source addresses for the load generators and the sizes it derives."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.harness import BenchError
from bench.hundredk_limits import (
    check_nofile,
    generators_needed,
    port_range,
    source_addresses,
    sources_needed,
)
from bench.hundredk_steps import wait_calm
from bench.loadgen import Generator

BROADCAST_FRAME = b"\x81\x05b0001"


async def handshake_server(peers: list[str]) -> asyncio.Server:
    """Answer every upgrade with a 101 and one broadcast frame; record the peer address."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n" + BROADCAST_FRAME)
        await writer.drain()
        await reader.read()  # until the client goes
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_clients_bind_to_the_sources_in_turn() -> None:
    peers: list[str] = []
    server = await handshake_server(peers)
    port = server.sockets[0].getsockname()[1]
    sources = ["127.0.9.1", "127.0.9.2", "127.0.9.3"]
    generator = Generator()
    started = time.monotonic()
    try:
        reply = await generator.connect({"port": port, "paths": [f"/ws/{i}" for i in range(9)],
                                         "sources": sources, "timeout": 5.0})
        stats = generator.stats(light=True)
    finally:
        await generator.close()
        server.close()
        await server.wait_closed()
    assert reply["connected"] == 9, reply["errors"]
    assert reply["by_source"] == dict.fromkeys(sources, 3)
    assert Counter(peers) == dict.fromkeys(sources, 3)
    assert stats["bcast"] == 9
    assert stats["bcast_at"] >= started


async def test_without_sources_clients_use_the_default_address() -> None:
    peers: list[str] = []
    server = await handshake_server(peers)
    port = server.sockets[0].getsockname()[1]
    generator = Generator()
    try:
        reply = await generator.connect({"port": port, "paths": ["/ws/a", "/ws/b"]})
    finally:
        await generator.close()
        server.close()
        await server.wait_closed()
    assert reply["connected"] == 2
    assert "by_source" not in reply
    assert peers == ["127.0.0.1", "127.0.0.1"]


def test_source_addresses_differ_between_measurements() -> None:
    first, second = source_addresses(4, 1), source_addresses(4, 2)
    assert len(set(first)) == 4
    assert not set(first) & set(second)
    every_block = {addr for block in range(62_500) for addr in source_addresses(1, block)}
    assert len(every_block) == 62_500
    assert "127.0.0.1" not in every_block
    assert all(addr.startswith("127.") and int(addr.split(".")[1]) <= 250
               for addr in every_block)
    with pytest.raises(ValueError, match="251 source addresses"):
        source_addresses(251, 1)


def test_sources_cover_the_connections_with_spare_ports() -> None:
    ports = (32768, 60999)  # 28,232 ports; 22,585 planned per address
    assert sources_needed(20_000, ports) == 1
    assert sources_needed(100_000, ports) == 5
    assert sources_needed(100_000, (50000, 50999)) == 125


def test_generators_follow_the_descriptor_limit() -> None:
    assert generators_needed(100_000, 1 << 20) == 8
    assert generators_needed(2_000, 1 << 20) == 4
    assert generators_needed(100_000, 10_256) == 10
    with pytest.raises(BenchError):
        generators_needed(10, 100)


def test_a_low_descriptor_limit_is_refused_with_what_to_do() -> None:
    check_nofile(18_000, 20_000)
    with pytest.raises(BenchError, match="ulimit -Hn"):
        check_nofile(100_000, 20_000)


def test_port_range_reads_the_kernel_setting(tmp_path: Path) -> None:
    setting = tmp_path / "range"
    setting.write_text("1024\t65535\n")
    assert port_range(setting) == (1024, 65535)
    assert port_range(tmp_path / "missing") == (32768, 60999)


class PingingFleet:
    """Stands in for a Fleet: quiet for `quiet` polls, then `burst` more pings on each of
    the next `rounds` polls, then quiet again."""

    def __init__(self, quiet: int, rounds: int, burst: int = 100) -> None:
        self.polls = 0
        self.quiet = quiet
        self.rounds = rounds
        self.burst = burst

    def stats(self, *, light: bool = False) -> dict[str, int]:
        self.polls += 1
        return {"ping": self.burst * min(max(self.polls - self.quiet, 0), self.rounds)}


class BusyServer:
    """Stands in for a Server: a second of CPU more on each of its first `busy` readings."""

    def __init__(self, busy: int) -> None:
        self.readings = 0
        self.busy = busy

    def cpu_seconds(self) -> float:
        self.readings += 1
        return float(min(self.readings, self.busy))


def test_a_broadcast_waits_for_the_ping_round_and_its_pongs() -> None:
    # The quiet before the round is longer than the gap: it must not count.
    fleet, server = PingingFleet(quiet=12, rounds=4), BusyServer(busy=8)
    wait_calm(fleet, server, rounds=True, limit_pct=10.0, max_wait=60.0,  # type: ignore[arg-type]
              gap=0.02)
    assert fleet.polls > 12 + 4  # through the round
    assert server.readings > 8  # and through the pongs after it


def test_a_spread_heartbeat_waits_for_the_cpu_only() -> None:
    fleet, server = PingingFleet(quiet=0, rounds=10**6), BusyServer(busy=3)
    wait_calm(fleet, server, rounds=False, limit_pct=10.0, max_wait=60.0,  # type: ignore[arg-type]
              gap=0.02)
    assert server.readings > 3
