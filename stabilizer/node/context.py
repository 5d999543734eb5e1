"""NodeContext: what every service of one node shares, and nothing more.

The node's id and config, its backend, its pool of local connections, its counters, its task
owner and its phase. Services receive the context and each other explicitly; none of them
sees the manager.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable
from enum import Enum
from typing import Final, TypeVar

from stabilizer.backends.base import Backend
from stabilizer.config import CloseCode, WebSocketConfig
from stabilizer.connection.connection import OutboxLimits
from stabilizer.connection.pool import Pool
from stabilizer.errors import BackendUnavailable, WebSocketStabilizerError
from stabilizer.node.tasks import TaskOwner
from stabilizer.stats import NodeStats

#: Round trips opening, ending, suspending or sweeping sessions may take (spread: a guard
#: read, the client's steps, a lease, the groups' leaves and the clean-up).
SESSION_ROUND_TRIPS: Final = 6

T = TypeVar("T")


async def within_round_trips(awaitable: Awaitable[T], op_timeout: float, round_trips: int,
                             what: str = "backend") -> T:
    """Await a backend operation of `round_trips` round trips within op_timeout each, and
    one more: a call batched with others may first wait for the batch in flight (the
    backend bounds each round trip itself; this is the backstop). Shared by a node's
    services (NodeContext.ask) and an emitter.

    Raises:
        BackendUnavailable: the backend failed or did not answer in time.
    """
    limit = op_timeout * (round_trips + 1)
    try:
        async with asyncio.timeout(limit):
            return await awaitable
    except TimeoutError as exc:
        raise BackendUnavailable(f"{what} did not answer within {limit:g}s") from exc


class Phase(Enum):
    """Lifecycle of a node."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def default_node_id() -> str:
    """Return an id unique per process: host name, pid and 4 random hex digits."""
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())
    return f"{host[:40] or 'node'}-{os.getpid()}-{os.urandom(2).hex()}"


class NodeContext:
    """The state one node's services share."""

    def __init__(self, config: WebSocketConfig, backend: Backend, *, node_id: str | None = None,
                 stats: NodeStats | None = None) -> None:
        self.config = config
        self.node_id = node_id or config.node_id or default_node_id()
        self.backend = backend
        self.pool = Pool(config.num_shards)
        self.stats = stats if stats is not None else NodeStats()
        self.tasks = TaskOwner()
        self.limits = OutboxLimits(config.max_queue_size, config.max_memory_per_connection,
                                   config.write_timeout)
        self.phase = Phase.NEW
        self.loop: asyncio.AbstractEventLoop | None = None  # the one start() ran in
        self.started = False  # the node's start ran to its end (a later start does nothing)
        self.shutdown_code: CloseCode = config.shutdown_close_code
        self._resync_wanted = False
        # clients whose session a close could not settle (the backend was unreachable):
        # client id -> how long their session is kept (0: it ends), for maintenance to retry
        self._unsettled: dict[str, float] = {}

    @property
    def is_accepting(self) -> bool:
        """True while new connections are admitted."""
        return self.phase in (Phase.NEW, Phase.RUNNING)

    @property
    def follows_others(self) -> bool:
        """True when the node must listen to the backend: other nodes exist, or history
        sequences every message through it."""
        return self.backend.is_shared or self.config.history_enabled

    def loop_closed(self) -> bool:
        """True when the node runs in an event loop that has closed and another one calls
        (the manager starts a new node in it); False in its own loop, in synchronous code,
        or once it stopped.

        Raises:
            WebSocketStabilizerError: its loop is still open, running in another thread or
                idle: the node's tasks, locks and sockets belong to it.
        """
        started_in = self.loop
        if started_in is None or self.phase is not Phase.RUNNING:
            return False  # a stopped node stays stopped (the manager's start() replaces it)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # called from synchronous code: nothing is loop-bound there
            return False
        if running is started_in:
            return False
        if started_in.is_closed():
            return True
        if started_in.is_running():
            raise WebSocketStabilizerError(
                "this manager serves an event loop that still runs in another thread; a "
                "manager serves one event loop at a time: create one per loop (per thread)")
        raise WebSocketStabilizerError(
            "this manager's node runs in an event loop that is open but not running (one run "
            "with run_until_complete, or a pytest-asyncio fixture's of a wider loop_scope) "
            "and holds its clients there; a manager serves one event loop at a time: use it "
            "in that loop (pytest-asyncio: give the tests the fixture's loop_scope), or shut "
            "it down there and create a manager in this loop")

    def want_resync(self) -> None:
        """Ask for local presence to be re-registered at the next maintenance step (the
        backend was unreachable when it changed)."""
        self._resync_wanted = True

    def take_resync(self) -> bool:
        """True (once) if a resync was asked for since the last call."""
        wanted, self._resync_wanted = self._resync_wanted, False
        return wanted

    def unsettled(self, client_id: str, session_ttl: float) -> None:
        """A close could not suspend or end `client_id`'s session: maintenance suspends it
        for `session_ttl` seconds (0: the next sweep ends it, groups included) once the
        backend answers, so that nothing of it is left for good."""
        self._unsettled[client_id] = session_ttl

    def take_unsettled(self) -> dict[str, float]:
        """The sessions left unsettled since the last call (see unsettled())."""
        taken, self._unsettled = self._unsettled, {}
        return taken

    async def ask(self, awaitable: Awaitable[T], *, round_trips: int = 1) -> T:
        """Await a backend operation of `round_trips` round trips (within_round_trips).

        Raises:
            BackendUnavailable: the backend failed or did not answer in time.
        """
        return await within_round_trips(awaitable, self.config.op_timeout, round_trips)
