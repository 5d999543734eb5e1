"""History in Redis: per stream, a trimmed Redis stream of envelopes and a meta hash with the
offset and epoch; one script appends and publishes."""

from __future__ import annotations

import secrets
from typing import Final

from stabilizer.backends.base import History, Sequenced
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore, text
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.errors import BackendNotReached, BackendUnavailable
from stabilizer.pure.streams import Target
from stabilizer.pure.wire import Envelope, sequenced_prefix

_ABSENT: Final = 2  # the HISTORY script's status for a stream with no meta at all


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
        keys = self._core.keys
        client = target.name if target.kind == "client" else ""
        # spread: the client's session is in its own slot, which the script cannot read
        owner, found = "", "?" if client and keys.spread else ""
        if client and keys.buckets > 1:
            # presence lives in another slot than the stream: look the owner up first
            try:
                located = await self._presence.locate(client)
            except BackendUnavailable as exc:  # a read: the script was not sent
                raise BackendNotReached(str(exc)) from exc
            owner = located.node_id if located is not None else "-"
            if located is None and keys.spread:
                found = await self._session_found(client)
                if not found:
                    return Sequenced(0, "", 0)
        return await self._sequence(target, envelope, owner, found, size=size, ttl=ttl,
                                    meta_ttl=meta_ttl)

    async def _sequence(self, target: Target, envelope: Envelope, owner: str, found: str, *,
                        size: int, ttl: float, meta_ttl: float) -> Sequenced:
        core = self._core
        keys = core.keys
        stream = target.stream
        client = target.name if target.kind == "client" else ""
        meta = keys.stream_meta(stream)
        channel = ""
        where = keys.slot_presence
        if target.kind == "all":
            channel = keys.broadcast_channel
        elif target.kind == "group":
            channel = keys.group_channel(target.name)
            if keys.spread:  # a key of the group's slot, which the script does not read
                where = meta
        elif target.kind == "user":
            where = keys.user(target.name)
        # spread: the session is in the client's slot, never read here (`found` tells)
        session = where if keys.spread else keys.session(client)
        reply = await core.run_once(
            core.scripts.sequence,
            keys=[keys.stream(stream), meta, where, session],
            args=[target.kind, sequenced_prefix(envelope), size, int(ttl * 1000),
                  int(max(ttl, meta_ttl) * 1000), secrets.token_urlsafe(6),
                  core.publish_command, channel, client, keys.sequenced_direct_prefix, owner,
                  found],
            op="sequence")
        if int(reply[0]) == -1:  # not connected, its session unread: the script did nothing
            found = await self._session_found(client)
            if not found:
                return Sequenced(0, "", 0)
            return await self._sequence(target, envelope, "-", found, size=size, ttl=ttl,
                                        meta_ttl=meta_ttl)
        return Sequenced(int(reply[0]), text(reply[1]), int(reply[2]),
                         tuple(text(client_id) for client_id in reply[3:]))

    async def _session_found(self, client_id: str) -> str:
        """'1' when the client's session exists (a read before a run_once script: a failure
        means the script was not sent)."""
        core = self._core
        try:
            exists = await core.call(core.client.exists(core.keys.session(client_id)),
                                     "sequence")
        except BackendUnavailable as exc:
            raise BackendNotReached(str(exc)) from exc
        return "1" if int(exists) else ""

    async def read(self, stream: str, after: int, epoch: str, *, max_entries: int = 0,
                   max_bytes: int = 0) -> History:
        """One script: check the epoch and coverage, return the entries after `after` (a
        page of them, when bounded)."""
        keys = self._core.keys
        reply = await self._reads.submit([keys.stream(stream), keys.stream_meta(stream)],
                                         [after, epoch, max_entries, max_bytes])
        status = int(reply[0])
        if not status:
            return History([], False, text(reply[1]) if len(reply) > 1 else None)
        if status == _ABSENT:
            return History([], True, absent=True)
        return History([bytes(raw) for raw in reply[2:]], True, last=int(reply[1]))
