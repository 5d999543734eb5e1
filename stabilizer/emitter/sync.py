"""SyncEmitter: the Emitter for blocking code (a Celery task, a Django view, a script).

It runs one Emitter on a private event loop in a daemon thread and waits for each call, so
both share one implementation. The thread and the Redis connections are made on first use,
in the process that uses them: a SyncEmitter made at import time in a Celery parent works
in each forked worker, and one the parent already used too (the child starts its own).

A forked child shares the open file descriptions of what it inherits with its parent: the
sockets and the epoll instance of the parent's loop. Closing or collecting the inherited
transports (at the child's exit, in a gc pass) would unregister the parent's sockets from
that epoll instance (EPOLL_CTL_DEL acts on the shared instance), or write on the parent's
connections, and the parent's next call would wait for a reply it is never woken for. So
right after a fork, the child points its own copies of those descriptors at inert stand-ins
and keeps the inherited objects for good (see _disown).
"""

from __future__ import annotations

import asyncio
import os
import select
import selectors
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from stabilizer.backends.base import Presence
from stabilizer.backends.memory import MemoryHub
from stabilizer.config import CloseCode, WebSocketConfig
from stabilizer.emitter.base import OUTCOME_UNKNOWN, emitter_config
from stabilizer.emitter.emitter import Emitter
from stabilizer.errors import BackendUnavailable, ConfigError, WebSocketStabilizerError
from stabilizer.pure.presence import PresenceMap
from stabilizer.pure.text import Message
from stabilizer.results import BroadcastResult

T = TypeVar("T")

#: Bound on one call beyond the round trips it is allowed (each is bounded inside).
_SLACK: Final = 2.0
#: The op_timeouts the longest call's bounds add up to (each ask of the Emitter allows its
#: round trips and one more, for a batch in flight: within_round_trips): join_group on first
#: use opens (2 round trips: 3), locates the client, joins and tells its node (2 each) where
#: a change and its route are one step each; join_group and leave_group count their
#: layout's steps (Emitter._group_change_op_timeouts).
_OP_TIMEOUTS: Final = 9
_OPEN_OP_TIMEOUTS: Final = 3
_NO_CLIENT: Final = "a SyncEmitter runs its own event loop in its own thread; "


class _Runner:
    """A private event loop in a daemon thread, and the emitter that lives on it."""

    def __init__(self, make: Callable[[], Emitter]) -> None:
        self.pid = os.getpid()
        # a selector of our own, so that a forked child can find the descriptors to disown
        self.selector = selectors.DefaultSelector()
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(self.selector)
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name="stabilizer-sync-emitter")
        self.thread.start()
        try:
            self.emitter = make()
        except BaseException:  # nothing else would ever stop the thread started above
            self._halt()
            raise

    def _serve(self) -> None:
        """The thread: run the loop until it is stopped, then close it (its selector and
        its wake-up pipe), also when stop_soon stopped it and nobody joins the thread."""
        self.loop.run_forever()
        self.loop.close()

    def run(self, call: Callable[[Emitter], Awaitable[T]], timeout: float | None,
            writes: bool) -> T:
        """Run `call` on the loop and wait for it, at most `timeout` seconds.

        Raises:
            BackendUnavailable: it did not end in time (for a call that `writes`, the message
                says "outcome unknown": its request may have gone out, as the Emitter's
                write that fails after it may have run).
        """
        async def job() -> T:
            return await call(self.emitter)

        future = asyncio.run_coroutine_threadsafe(job(), self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            future.cancel()
            detail = f"the emitter did not answer within {timeout:g}s"
            raise BackendUnavailable(f"{detail}; {OUTCOME_UNKNOWN}" if writes else detail
                                     ) from exc

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.emitter.aclose(), self.loop).result(10.0)
        finally:
            self._halt()

    def _halt(self) -> None:
        """Stop the loop and wait (bounded) for its thread, which closes it."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)

    def stop_soon(self) -> None:
        """Close the emitter and stop the thread without waiting for either: for a
        finalizer, which may run on any thread, this loop's own included."""
        async def wind_down() -> None:
            try:
                async with asyncio.timeout(10.0):
                    await self.emitter.aclose()
            finally:
                self.loop.stop()

        winding = wind_down()
        try:
            asyncio.run_coroutine_threadsafe(winding, self.loop)
        except RuntimeError:  # the loop is closed already
            winding.close()


class _Slot:
    """Where a SyncEmitter keeps its runner: apart from it, so that its finalizer can stop
    the runner without keeping the SyncEmitter alive (nor does the runner refer to it)."""

    __slots__ = ("runner",)

    def __init__(self) -> None:
        self.runner: _Runner | None = None


def _reclaim(slot: _Slot) -> None:
    """The finalizer of a SyncEmitter dropped without close(): stop its runner (one this
    process started; a forked child's inherited one is disowned, never stopped)."""
    runner, slot.runner = slot.runner, None
    if runner is not None and runner.pid == os.getpid():
        runner.stop_soon()


#: Runners a forked child inherited, kept so that they are never finalised in the child.
_INHERITED: Final[list[_Runner]] = []
#: Every SyncEmitter of the process, for the fork hook.
_EMITTERS: Final[weakref.WeakSet[SyncEmitter]] = weakref.WeakSet()


def _disown(runner: _Runner) -> None:
    """In a forked child, make an inherited runner inert: point the child's copies of the
    descriptors its loop polls (the Redis sockets, the loop's wake-up pipe) at /dev/null and
    of its epoll instance at a new empty one, so that nothing the child does to the copies,
    closing or collecting them included, reaches the parent's; and keep it referenced."""
    _INHERITED.append(runner)
    fds = [key.fd for key in runner.selector.get_map().values()]
    with open(os.devnull, "rb") as null:
        for fd in fds:
            os.dup2(null.fileno(), fd, inheritable=False)
    if sys.platform == "linux" and isinstance(runner.selector, selectors.EpollSelector):
        fresh = select.epoll()
        try:
            os.dup2(fresh.fileno(), runner.selector.fileno(), inheritable=False)
        finally:
            fresh.close()
    # (kqueue descriptors are not inherited; poll and select keep no state in the kernel)


def _after_fork_in_child() -> None:
    for emitter in list(_EMITTERS):
        emitter._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncEmitter:
    """A blocking Emitter: the same operations, arguments, results and exceptions, called
    from code that is not async. Close it with close() (or ``with``); one dropped without
    close() gives its thread and Redis connections back once it is garbage (not at exit).

    It takes ``redis_url=...`` or ``config=...`` and makes its own Redis client on its own
    loop; it takes no ``client``.

    Raises:
        ConfigError: as Emitter (checked here, before any thread starts), or a `client`
            is given (a redis.asyncio client serves the application's loop, not the
            SyncEmitter's; a MemoryHub its replicas' loop).
    """

    def __init__(self, redis_url: str | None = None, *, namespace: str | None = None,
                 client: Any = None, config: WebSocketConfig | None = None,
                 **settings: object) -> None:
        def make() -> Emitter:
            return Emitter(redis_url, namespace=namespace, client=client, config=config,
                           **settings)

        if client is not None:
            raise ConfigError(_NO_CLIENT + (
                "a MemoryHub's replicas do not share it: use an Emitter in their loop"
                if isinstance(client, MemoryHub) else
                f"a client made elsewhere ({type(client).__name__}) cannot serve it: a "
                "redis.asyncio client's connections belong to the loop that used them, and "
                "a blocking redis.Redis is no asyncio client; give it redis_url=... or "
                "config=..., or use an Emitter in the application's loop"))
        self._make = make
        self._config = emitter_config(redis_url, namespace, client, config, settings)
        self._slot = _Slot()
        # a SyncEmitter dropped without close() gives its thread and connections back
        # (not at exit: the daemon thread ends with the process, as it always has)
        weakref.finalize(self, _reclaim, self._slot).atexit = False
        self._lock = threading.Lock()
        self._closed = False
        _EMITTERS.add(self)

    @property
    def config(self) -> WebSocketConfig:
        """The settings this emitter shares with the replicas (frozen)."""
        return self._config

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the emitter and stop its thread; a second call does nothing."""
        with self._lock:
            self._closed = True
            runner, self._slot.runner = self._slot.runner, None
        if runner is not None and runner.pid == os.getpid():
            runner.stop()

    def _forked(self) -> None:
        """In a forked child (the only thread): disown the parent's runner; the next call
        starts the child's own."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        runner, self._slot.runner = self._slot.runner, None
        if runner is not None:
            _disown(runner)

    def _run(self, call: Callable[[Emitter], Awaitable[T]], *, bounded: bool = True,
             op_timeouts: int | Callable[[Emitter], int] = 0, writes: bool = False) -> T:
        """Run `call` on this emitter's loop, for at most what its bounds inside add up to
        (`op_timeouts`, or what it says for the emitter, when it may take more than
        _OP_TIMEOUTS); `writes` when it has an effect (a send, a disconnect, a group
        change)."""
        with self._lock:
            if self._closed:
                raise WebSocketStabilizerError("this SyncEmitter is closed; make a new one")
            runner = self._slot.runner
            if runner is not None and runner.pid != os.getpid():  # forked past the hook
                _disown(runner)
                runner = None
            if runner is None:
                runner = self._slot.runner = _Runner(self._make)
        if threading.current_thread() is runner.thread:
            raise WebSocketStabilizerError("a SyncEmitter cannot be called from its own loop")
        wanted = op_timeouts(runner.emitter) if callable(op_timeouts) else op_timeouts
        longest = max(wanted, _OP_TIMEOUTS)
        timeout = self._config.op_timeout * longest + _SLACK if bounded else None
        return runner.run(call, timeout, writes)

    def broadcast(self, message: Message, exclude_client: str | None = None) -> BroadcastResult:
        """Emitter.broadcast, blocking."""
        return self._run(lambda e: e.broadcast(message, exclude_client), writes=True)

    def send_to_group(self, group: str, message: Message,
                      exclude_client: str | None = None) -> BroadcastResult:
        """Emitter.send_to_group, blocking."""
        return self._run(lambda e: e.send_to_group(group, message, exclude_client), writes=True)

    def send_to_client(self, client_id: str, message: Message) -> bool:
        """Emitter.send_to_client, blocking."""
        return self._run(lambda e: e.send_to_client(client_id, message), writes=True)

    def send_to_user(self, user_id: str, message: Message) -> int:
        """Emitter.send_to_user, blocking."""
        return self._run(lambda e: e.send_to_user(user_id, message), writes=True)

    def disconnect_user(self, user_id: str, *, code: int = CloseCode.NORMAL,
                        reason: str = "disconnected by the server") -> int:
        """Emitter.disconnect_user, blocking."""
        return self._run(lambda e: e.disconnect_user(user_id, code=code, reason=reason),
                         writes=True)

    def disconnect_client(self, client_id: str, *, code: int = CloseCode.NORMAL,
                          reason: str = "disconnected by the server") -> bool:
        """Emitter.disconnect_client, blocking."""
        return self._run(lambda e: e.disconnect_client(client_id, code=code, reason=reason),
                         writes=True)

    def join_group(self, client_id: str, group: str) -> None:
        """Emitter.join_group, blocking."""
        self._run(lambda e: e.join_group(client_id, group), writes=True,
                  op_timeouts=Emitter._group_change_op_timeouts)

    def leave_group(self, client_id: str, group: str) -> None:
        """Emitter.leave_group, blocking."""
        self._run(lambda e: e.leave_group(client_id, group), writes=True,
                  op_timeouts=Emitter._group_change_op_timeouts)

    def get_cluster_connection_count(self) -> int:
        """Emitter.get_cluster_connection_count, blocking."""
        return self._run(lambda e: e.get_cluster_connection_count(),  # a round trip a bucket
                         op_timeouts=_OPEN_OP_TIMEOUTS + self._config.presence_buckets + 1)

    def get_cluster_connections(self, batch: int = 500) -> list[Presence]:
        """Every client's presence (Emitter.get_cluster_connections, collected)."""
        async def collect(emitter: Emitter) -> list[Presence]:
            return [p async for p in emitter.get_cluster_connections(batch)]

        return self._run(collect, bounded=False)  # any number of batches, each bounded

    def locate_client(self, client_id: str) -> str | None:
        """Emitter.locate_client, blocking."""
        return self._run(lambda e: e.locate_client(client_id))

    def get_group_members(self, group: str) -> list[str]:
        """Emitter.get_group_members, blocking."""
        return self._run(lambda e: e.get_group_members(group), bounded=False)

    def get_client_groups(self, client_id: str) -> list[str]:
        """Emitter.get_client_groups, blocking."""
        return self._run(lambda e: e.get_client_groups(client_id), bounded=False)

    def get_presence(self, group: str) -> PresenceMap:
        """Emitter.get_presence, blocking."""
        return self._run(lambda e: e.get_presence(group))

    def count_presence(self, group: str) -> int:
        """Emitter.count_presence, blocking."""
        return self._run(lambda e: e.count_presence(group))

    def get_user_connections(self, user_id: str) -> list[Presence]:
        """Emitter.get_user_connections, blocking."""
        return self._run(lambda e: e.get_user_connections(user_id))

    def get_cluster_user_count(self) -> int:
        """Emitter.get_cluster_user_count, blocking."""
        return self._run(lambda e: e.get_cluster_user_count())

    def get_nodes(self) -> list[str]:
        """Emitter.get_nodes, blocking."""
        return self._run(lambda e: e.get_nodes())
