"""Hooks and cluster events: on_connect / on_disconnect callbacks (once per local connection)
and, with ``cluster_events``, connect / disconnect / join / leave events from every node."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from stabilizer.connection.connection import Connection
from stabilizer.errors import APPLICATION_FAILURES, BackendUnavailable, ConfigError, WireError
from stabilizer.logs import RateLimitedLog
from stabilizer.node.context import NodeContext
from stabilizer.pure.wire import event_of
from stabilizer.results import ClusterEvent, ConnectionEvent

logger = logging.getLogger(__name__)

Hook = Callable[[ConnectionEvent], Any]
ClusterListener = Callable[[ClusterEvent], Any]


class Events:
    """Runs a node's hooks and cluster-event listeners."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._connect_hooks: list[Hook] = []
        self._disconnect_hooks: list[Hook] = []
        self._listeners: list[ClusterListener] = []
        self._backend_log = RateLimitedLog(logger)
        self._wire_log = RateLimitedLog(logger)

    def on_connect(self, hook: Hook) -> Hook:
        """Run `hook` once per local connect."""
        self._connect_hooks.append(hook)
        return hook

    def on_disconnect(self, hook: Hook) -> Hook:
        """Run `hook` once per local disconnect."""
        self._disconnect_hooks.append(hook)
        return hook

    def on_cluster_event(self, listener: ClusterListener) -> ClusterListener:
        """Call `listener` for every cluster event.

        Raises:
            ConfigError: cluster_events is not enabled in the config.
        """
        if not self._ctx.config.cluster_events:
            raise ConfigError("set cluster_events=True to receive cluster events")
        self._listeners.append(listener)
        return listener

    def adopt(self, earlier: Events) -> None:
        """Take the hooks and listeners registered on `earlier` (the node this one
        replaces)."""
        self._connect_hooks += earlier._connect_hooks
        self._disconnect_hooks += earlier._disconnect_hooks
        self._listeners += earlier._listeners

    @property
    def follows_connects(self) -> bool:
        """True when a connect has hooks to run or an event to publish (most apps have
        neither, and their connects then skip connected() altogether)."""
        return bool(self._connect_hooks) or self._ctx.config.cluster_events

    async def connected(self, conn: Connection, *, resumed: bool) -> None:
        """A connection was admitted on this node."""
        if self._connect_hooks:
            await self._run(self._connect_hooks, ConnectionEvent(
                conn.client_id, conn.conn_id, self._ctx.node_id, resumed=resumed))
        if self._ctx.config.cluster_events:
            await self._publish("connect", conn.client_id)

    async def disconnected(self, conn: Connection, code: int, reason: str, *,
                           replaced: bool) -> None:
        """A connection of this node was closed with `code` (the client's, when it closed
        first); a `replaced` one is no cluster event: its client is still connected,
        elsewhere."""
        if self._disconnect_hooks:
            await self._run(self._disconnect_hooks, ConnectionEvent(
                conn.client_id, conn.conn_id, self._ctx.node_id, code=code, reason=reason))
        if not replaced and self._ctx.config.cluster_events:
            await self._publish("disconnect", conn.client_id)

    def membership(self, event: str, client_id: str, group: str) -> None:
        """A local client joined or left a group (other nodes hear of it from the backend)."""
        if self._ctx.config.cluster_events:
            self.emit(ClusterEvent(event, client_id, group, self._ctx.node_id))

    def received(self, payload: str) -> None:
        """An event another node published."""
        try:
            event = event_of(payload)
        except WireError:
            self._ctx.stats.wire_errors += 1
            self._wire_log.warning("dropped a malformed cluster event")
            return
        if event.node_id != self._ctx.node_id:
            self.emit(event)

    def emit(self, event: ClusterEvent) -> None:
        """Call every cluster-event listener (async ones run as tasks of the node)."""
        for listener in self._listeners:
            try:
                outcome = listener(event)
                if inspect.iscoroutine(outcome):
                    self._ctx.tasks.spawn(_listened(outcome), name="stabilizer-event")
            except APPLICATION_FAILURES:
                logger.exception("cluster event listener failed")

    async def _publish(self, event: str, client_id: str) -> None:
        """(Called with cluster_events on.)"""
        ctx = self._ctx
        cluster_event = ClusterEvent(event, client_id, None, ctx.node_id)
        self.emit(cluster_event)
        if ctx.backend.is_shared:
            try:
                await ctx.ask(ctx.backend.events.publish(cluster_event))
            except BackendUnavailable as exc:
                self._backend_log.warning("cluster event not published", exc=exc)

    @staticmethod
    async def _run(hooks: list[Hook], event: ConnectionEvent) -> None:
        for hook in hooks:
            try:
                outcome = hook(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except APPLICATION_FAILURES:
                logger.exception("%s hook %r failed",
                                 "connect" if event.code is None else "disconnect", hook)


async def _listened(outcome: Coroutine[Any, Any, Any]) -> None:
    """Run an async listener's coroutine in a task of the node: its failure, an exit
    included, is logged there (a task that raised SystemExit would end the event loop)."""
    try:
        await outcome
    except APPLICATION_FAILURES:
        logger.exception("cluster event listener failed")
