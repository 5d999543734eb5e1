"""What every part of the emitter shares: its settings, its origin, the backend it opens on
first use, and one bounded way to ask the backend."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from stabilizer.backends.base import Backend
from stabilizer.backends.factory import backend_for, check_redis_url
from stabilizer.backends.memory import MemoryBackend, MemoryHub
from stabilizer.config import WebSocketConfig
from stabilizer.errors import (
    AuthenticationError,
    BackendNotReached,
    BackendRefused,
    BackendUnavailable,
    ConfigError,
    WebSocketStabilizerError,
)
from stabilizer.node.context import within_round_trips
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.text import check_client_id
from stabilizer.pure.users import check_user_id

T = TypeVar("T")

_STOP_GRACE: Final = 2.0
#: What the error of a write that failed after its request may have gone out adds.
OUTCOME_UNKNOWN: Final = ("outcome unknown: it may have taken effect, and doing it again may "
                          "repeat it")


def emitter_origin() -> str:
    """An origin for an emitter's envelopes: ``emitter:<host>-<pid>-<random>``; no node id
    can equal it (node ids never contain ":"), so no replica takes it for its own."""
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())
    return f"emitter:{host[:40] or 'host'}-{os.getpid()}-{os.urandom(3).hex()}"


def check_user(user_id: object) -> str:
    """Return `user_id` if usable as a user id.

    Raises:
        ValueError: not a non-empty string of at most 256 characters.
    """
    try:
        return check_user_id(user_id)
    except AuthenticationError as exc:
        raise ValueError(str(exc)) from exc


def emitter_config(redis_url: str | None, namespace: str | None, client: Any,
                   config: WebSocketConfig | None,
                   settings: dict[str, object]) -> WebSocketConfig:
    """The config an emitter runs with: `config` (else the defaults) with `redis_url`,
    `namespace` and the other `settings` (config fields) replaced.

    Raises:
        ConfigError: no Redis (nor hub) is named, `client` is neither a redis.asyncio
            client (a blocking redis.Redis is not one) nor a MemoryHub, a setting is
            invalid or unknown, or redis_url does not parse.
    """
    hub = isinstance(client, MemoryHub)
    if client is not None and not hub and not (
            callable(getattr(client, "register_script", None))
            and inspect.iscoroutinefunction(getattr(client, "execute_command", None))):
        raise ConfigError(  # a blocking redis.Redis has register_script too
            f"an Emitter's client must be a redis.asyncio client (Redis, RedisCluster or a "
            f"Sentinel's master) or the replicas' MemoryHub, not {type(client).__name__}")
    changes = dict(settings)
    if redis_url is not None:
        changes["redis_url"] = redis_url
    if namespace is not None:
        changes["namespace"] = namespace
    try:
        built = (config if config is not None else WebSocketConfig()).replace(**changes)
    except TypeError as exc:  # a keyword that is no config field, or a value of no sense
        raise ConfigError(f"invalid Emitter setting: {exc}") from exc
    if client is None and built.redis_url is None:
        raise ConfigError("an Emitter needs the replicas' Redis (redis_url=... or client=...),"
                          " or, in their process, their MemoryHub (client=hub)")
    if hub and built.redis_url is not None:
        raise ConfigError("an Emitter on a MemoryHub takes no redis_url")
    if client is None and built.redis_url is not None:
        check_redis_url(built.redis_url)  # before a SyncEmitter starts its thread
    return built


class EmitterBase:
    """The settings, origin and backend of an emitter (see Emitter)."""

    def __init__(self, redis_url: str | None = None, *, namespace: str | None = None,
                 client: Any = None, config: WebSocketConfig | None = None,
                 **settings: object) -> None:
        self._config = emitter_config(redis_url, namespace, client, config, settings)
        self._backend: Backend = (MemoryBackend(client) if isinstance(client, MemoryHub)
                                  else backend_for(self._config, client))
        self._origin = emitter_origin()
        self._tasks = TaskOwner()  # the backend's helper tasks (pipelined script batches)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0  # the process whose loop it serves (0: none yet)
        self._opening: asyncio.Lock | None = None
        self._opened = False
        self._closed = False

    @property
    def config(self) -> WebSocketConfig:
        """The settings this emitter shares with the replicas (frozen)."""
        return self._config

    @property
    def origin(self) -> str:
        """The origin its envelopes carry (``emitter:<host>-<pid>-<random>``)."""
        return self._origin

    @property
    def history(self) -> bool:
        """True when messages are sequenced into history streams (history_size > 0)."""
        return self._config.history_enabled

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop its helper tasks and close the Redis client it made (a client passed in
        stays open); a second call does nothing. In a forked child, it only marks the
        inherited emitter closed: its tasks and connections are the parent's."""
        if self._closed:
            return
        self._closed = True
        if self._forked():
            return
        await self._tasks.stop(_STOP_GRACE)
        await self._backend.aclose()

    async def _ready(self) -> Backend:
        """The backend, opened on first use (a failed open is tried again next time).

        Raises:
            WebSocketStabilizerError: the emitter is closed, or used from another loop.
            BackendNotReached: it could not connect (so the operation sent nothing).
        """
        if self._closed:
            raise WebSocketStabilizerError("this Emitter is closed; make a new one")
        if self._forked():
            raise WebSocketStabilizerError(
                f"this Emitter serves process {self._pid}, which this one was forked from; "
                "make a new one in this process (SyncEmitter does it by itself)")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._pid = loop, os.getpid()
        elif self._loop is not loop:
            raise WebSocketStabilizerError(
                "an Emitter serves the event loop it first ran on; make one per loop "
                "(or use SyncEmitter from blocking code)")
        if not self._opened:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if not self._opened:  # PING and SCRIPT LOAD: two round trips
                    try:
                        await self._ask(self._backend.open(
                            self._origin, self._tasks, events=self._config.cluster_events,
                            sessions=self._config.history_enabled, receives=False),
                            round_trips=2)
                    except BackendNotReached:
                        raise
                    except BackendUnavailable as exc:  # before the operation's request
                        raise BackendNotReached(
                            f"{exc}; the emitter could not connect: nothing was sent") from exc
                    self._opened = True
        return self._backend

    def _forked(self) -> bool:
        """True in a process forked from the one whose loop this emitter serves."""
        return self._pid not in (0, os.getpid())

    async def _ask(self, awaitable: Awaitable[T], *, round_trips: int = 1) -> T:
        """Await a backend operation of `round_trips` round trips, bounded as a node's are
        (within_round_trips).

        Raises:
            BackendUnavailable: the backend failed or did not answer in time.
        """
        return await within_round_trips(awaitable, self._config.op_timeout, round_trips,
                                        "redis")

    async def _write(self, awaitable: Awaitable[T], *, round_trips: int = 1) -> T:
        """_ask for an operation with an effect (a send, a disconnect, a group change).

        Raises:
            BackendNotReached: Redis was certainly not reached: it took no effect.
            BackendUnavailable: it failed after the request may have gone out: it may have
                taken effect (Redis ran it but did not answer in time), the message says
                "outcome unknown"; a BackendRefused when Redis answered with an error.
        """
        try:
            return await self._ask(awaitable, round_trips=round_trips)
        except BackendNotReached:
            raise
        except BackendUnavailable as exc:  # a refusal stays one (a script is not undone)
            kind = BackendRefused if isinstance(exc, BackendRefused) else BackendUnavailable
            raise kind(f"{exc}; {OUTCOME_UNKNOWN}") from exc

    def _client(self, client_id: object) -> str:
        """Return `client_id` if usable (InvalidClientIdError otherwise)."""
        return check_client_id(client_id, self._config.max_client_id_length)
