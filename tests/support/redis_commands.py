"""Count what Redis itself executed around an operation: commands (MONITOR) and round trips
(the server's read counter).

Why the counts are exact
------------------------
- The servers are dedicated to the test (``private_redis``, or a Cluster started for the
  module): nothing but the test's own managers talks to them.
- A window is bracketed on each server by two ``INFO stats`` calls sent on the watcher's own
  connection. Redis runs commands one at a time, so MONITOR shows every command between the
  two brackets, and only those; the watcher waits for the closing bracket to come out of the
  MONITOR stream instead of waiting some time.
- Commands that Lua scripts run (``[0 lua]`` in MONITOR) are not round trips and are left
  out; so are the watcher's own commands. The listener's idle ``PING`` on its pub/sub
  connection (sent after a few seconds of silence) is left out too, and counted apart: a
  subscribed connection cannot run anything else, so no operation hides there.
- Round trips are ``total_reads_processed`` deltas: the server counts one read per time a
  client's bytes arrive, so N commands sent in one pipeline show as one read, N sequential
  calls as N reads. The closing bracket's own read and the listener's idle pings are taken
  off. (One small pipeline is one write on loopback and therefore one read; keep measured
  pipelines well under the 16 KB Redis reads at once.)
- The managers under test must not run maintenance inside a window: give them a long
  ``node_ttl`` and ``memory_check_interval`` (one maintenance pass runs at start, then none
  for an hour) and call :func:`settled` after starting them.

On a Cluster pass every master: counts are summed over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from stabilizer import WebSocketConnectionManager
from tests.support.redis_server import RedisServer

_LINE = re.compile(r"^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
#: Commands whose first argument is a subcommand ("SCRIPT EXISTS", "CLIENT SETINFO").
_CONTAINERS = {"SCRIPT", "CLIENT", "CLUSTER", "CONFIG", "COMMAND", "OBJECT", "PUBSUB",
               "FUNCTION", "MEMORY", "XINFO"}
#: A MONITOR connection that fails to show the closing bracket within this is broken.
_BRACKET_TIMEOUT = 10.0


@dataclass(frozen=True)
class Command:
    """One command a client sent (not one a script ran)."""

    server: int
    client: str
    name: str
    args: tuple[str, ...]


@dataclass
class Seen:
    """What the servers executed inside one window."""

    commands: list[Command] = field(default_factory=list)
    round_trips: int = 0
    idle_pings: int = 0

    def names(self) -> Counter[str]:
        """How many times each command ran, e.g. ``Counter({"EVALSHA": 1})``."""
        return Counter(command.name for command in self.commands)

    def clients(self, server: int | None = None) -> set[str]:
        """The client connections (``ip:port``) that sent them, on one server or all."""
        return {c.client for c in self.commands if server is None or c.server == server}

    def describe(self) -> str:
        """A readable list for assertion messages."""
        lines = [f"{self.round_trips} round trip(s), {len(self.commands)} command(s):"]
        lines += [f"  [{c.server}] {c.client} {c.name} {' '.join(a[:40] for a in c.args[:3])}"
                  for c in self.commands]
        return "\n".join(lines)


class _Monitor:
    """One server: a MONITOR stream read into a list, and a control connection."""

    def __init__(self, index: int, server: RedisServer) -> None:
        self.index = index
        self.server = server
        self.lines: list[tuple[str, str, list[str]]] = []  # (client, name, args)
        self.arrived = asyncio.Event()
        self.control = Redis(host="127.0.0.1", port=server.port, single_connection_client=True)
        self.control_addr = ""
        self.brackets = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        info = await self.control.execute_command("CLIENT", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        self.control_addr = re.search(r"\baddr=(\S+)", text).group(1)  # type: ignore[union-attr]
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        assert (await self._reader.readline()).startswith(b"+OK"), "MONITOR refused"
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        while line := await self._reader.readline():
            match = _LINE.match(line.decode("utf-8", "backslashreplace").rstrip("\r\n"))
            if match is None:
                continue
            client, rest = match.group(3), match.group(4)
            args = [_unescape(arg) for arg in _ARG.findall(rest)]
            if not args:
                continue
            name = args[0].upper()
            if name in _CONTAINERS and len(args) > 1:
                name = f"{name} {args[1].upper()}"
                args = args[1:]
            self.lines.append((client, name, args[1:]))
            self.arrived.set()

    async def bracket(self) -> tuple[int, int]:
        """Run ``INFO stats`` on the control connection; return (reads counter, position of
        the bracket in the MONITOR stream) once MONITOR has shown it."""
        self.brackets += 1
        wanted = self.brackets
        stats = await self.control.info("stats")
        reads = int(stats["total_reads_processed"])
        async with asyncio.timeout(_BRACKET_TIMEOUT):
            while True:
                seen = 0
                for position, (client, name, _) in enumerate(self.lines):
                    if client == self.control_addr and name == "INFO":
                        seen += 1
                        if seen == wanted:
                            return reads, position
                self.arrived.clear()
                await self.arrived.wait()

    async def subscribers(self) -> set[str]:
        """Addresses of connections in pub/sub mode (the listener's)."""
        found = set()
        for client in await self.control.client_list():
            if any(int(client.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub")):
                found.add(client["addr"])
        return found

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        await self.control.aclose()


def _unescape(arg: str) -> str:
    """Undo MONITOR's quoting of one argument (enough to read names, keys and channels)."""
    return re.sub(r'\\(x[0-9a-fA-F]{2}|.)', lambda m: (
        chr(int(m.group(1)[1:], 16)) if m.group(1).startswith("x") and len(m.group(1)) == 3
        else {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1))), arg)


class CommandWatch:
    """MONITOR on every given server; :meth:`window` measures what ran inside it."""

    def __init__(self, servers: Iterable[RedisServer]) -> None:
        self._monitors = [_Monitor(index, server) for index, server in enumerate(servers)]

    async def __aenter__(self) -> CommandWatch:
        for monitor in self._monitors:
            await monitor.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for monitor in self._monitors:
            await monitor.close()

    @contextlib.asynccontextmanager
    async def window(self) -> AsyncIterator[Seen]:
        """Measure the body: on exit the yielded Seen holds every command a client sent
        and the round trips it took, summed over the servers."""
        seen = Seen()
        starts = [await monitor.bracket() for monitor in self._monitors]
        yield seen
        for monitor, (reads_before, first) in zip(self._monitors, starts, strict=True):
            reads_after, last = await monitor.bracket()
            listeners = await monitor.subscribers()
            idle_pings = 0
            for client, name, args in monitor.lines[first + 1:last]:
                if client in ("lua", monitor.control_addr):
                    continue
                if name == "PING" and client in listeners:
                    idle_pings += 1
                    continue
                seen.commands.append(Command(monitor.index, client, name, tuple(args)))
            seen.idle_pings += idle_pings
            # the closing INFO's own read is in reads_after; each idle ping was one read
            seen.round_trips += reads_after - reads_before - 1 - idle_pings


async def settled(*managers: WebSocketConnectionManager) -> None:
    """Return once every manager has finished its start: subscribed, and its first
    maintenance pass (keepalive, then session sweep) done, so no start-up command falls into
    a window.

    get_nodes() lists a node once its keepalive ran. The sweep is sent the loop turn after
    the keepalive's answer arrives, and that answer was ready before ours; two more awaited
    round trips of our own give the maintenance task those turns (asyncio runs ready tasks
    in order), so Redis has run the sweep before the first window's bracket."""
    for manager in managers:
        await manager.start()
    async with asyncio.timeout(10):
        for manager in managers:
            while manager.node_id not in await manager.get_nodes():
                await asyncio.sleep(0.01)
    for manager in managers:  # the sweep follows the keepalive by one loop turn
        await manager.get_nodes()
        await manager.get_nodes()
