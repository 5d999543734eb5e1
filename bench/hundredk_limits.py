"""Sizes and limits of ``bench.hundredk``: source addresses, load generators, descriptors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

from bench.harness import BenchError

#: Ephemeral ports of one source address we plan to use at most (others may hold some).
PORT_SHARE: Final = 0.8
#: File descriptors a process needs beyond its sockets (pipes, epoll, imports, logs).
FD_SPARE: Final = 256
CLIENTS_PER_GENERATOR: Final = 12_500


def port_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range (first, last)."""
    try:
        first, last = path.read_text().split()
        return int(first), int(last)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def sources_needed(connections: int, ports: tuple[int, int]) -> int:
    """Loopback source addresses so that no address uses more than PORT_SHARE of its ports."""
    per_source = int((ports[1] - ports[0] + 1) * PORT_SHARE)
    return max(1, math.ceil(connections / max(per_source, 1)))


def source_addresses(count: int, measurement: int) -> list[str]:
    """`count` loopback addresses for one measurement: 127.A.B.1 to 127.A.B.count, with A.B
    taken from `measurement` (modulo 62,500 blocks), so that other measurements use others.

    127.0.0.1 (the server's) is never used; Linux routes all of 127/8 to lo.
    """
    if not 1 <= count <= 250:
        raise ValueError(f"{count} source addresses; 1 to 250 fit one block")
    block = measurement % 62_500
    return [f"127.{1 + block // 250}.{block % 250}.{1 + i}" for i in range(count)]


def generators_needed(connections: int, nofile: int) -> int:
    """Load generators for `connections`: CLIENTS_PER_GENERATOR each, fewer if fds are short."""
    per_gen = min(CLIENTS_PER_GENERATOR, nofile - FD_SPARE)
    if per_gen <= 0:
        raise BenchError(f"RLIMIT_NOFILE is {nofile}: too low for any load generator")
    return max(4, math.ceil(connections / per_gen))


def check_nofile(connections: int, nofile: int) -> None:
    """Raise unless one server process may hold `connections` sockets."""
    if nofile < connections + FD_SPARE:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {nofile}, the server needs {connections + FD_SPARE:,}"
            f" descriptors for {connections:,} connections. Raise it for this shell first "
            f"(as root with CAP_SYS_RESOURCE: `ulimit -Hn {2 * connections + 4 * FD_SPARE}; "
            f"ulimit -Sn {2 * connections + 4 * FD_SPARE}`, or run under `prlimit --nofile="
            f"{2 * connections + 4 * FD_SPARE}`; in a container: `--ulimit nofile=...`), "
            f"or run fewer --connections.")
