"""History in Redis: per stream, a trimmed Redis stream of envelopes and a meta hash with the
offset and epoch; one script appends and publishes."""

from __future__ import annotations

import secrets

from stabilizer.backends.base import History, Sequenced
from stabilizer.backends.redis.core import RedisCore, ScriptBatcher, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.errors import BackendNotReached, BackendUnavailable
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, sequenced_prefix


class RedisHistory:
    """Sequencing and reading the streams."""

    def __init__(self, core: RedisCore, presence: RedisPresence) -> None:
        self._core = core
        self._presence = presence
        # the resumes of a reconnect storm read their streams in shared round trips
        self._reads = ScriptBatcher(core, core.scripts.history, "history")

    async def sequence(
        self, target: Target, envelope: Envelope, *, size: int, ttl: float, meta_ttl: float
    ) -> Sequenced:
        """One script: next offset, XADD (trimmed), PUBLISH the complete envelope; run at
        most once (BackendNotReached: it did not run; BackendUnavailable: it may have)."""
        core = self._core
        keys = core.keys
        stream = target.stream
        client = target.name if target.kind == "client" else ""
        if target.kind == "all":
            channel = keys.broadcast_channel
        elif target.kind == "group":
            channel = keys.group_channel(target.name)
        else:
            channel = ""
        owner = ""
        if client and keys.buckets > 1:
            # presence lives in another slot than the stream: look the owner up first
            try:
                located = await self._presence.locate(client)
            except BackendUnavailable as exc:  # a read: the script was not sent
                raise BackendNotReached(str(exc)) from exc
            owner = located.node_id if located is not None else "-"
        where = keys.user(target.name) if target.kind == "user" else keys.slot_presence
        reply = await core.run_once(
            core.scripts.sequence,
            keys=[keys.stream(stream), keys.stream_meta(stream), where, keys.session(client)],
            args=[target.kind, sequenced_prefix(envelope), size, int(ttl * 1000),
                  int(max(ttl, meta_ttl) * 1000), secrets.token_urlsafe(6),
                  core.publish_command, channel, client, keys.sequenced_direct_prefix, owner],
            op="sequence")
        return Sequenced(int(reply[0]), text(reply[1]), int(reply[2]))

    async def read(self, stream: str, after: int, epoch: str) -> History:
        """One script: check the epoch and coverage, return the entries after `after`."""
        keys = self._core.keys
        reply = await self._reads.submit([keys.stream(stream), keys.stream_meta(stream)],
                                         [after, epoch])
        if not int(reply[0]):
            return History([], False, text(reply[1]) if len(reply) > 1 else None)
        return History([bytes(raw) for raw in reply[1:]], True)
