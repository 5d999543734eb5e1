"""Sessions in Redis: a hash per client (user data, stream baselines) and an ``away`` sorted
set of clients whose session ends at a time; any node sweeps it."""

from __future__ import annotations

from collections.abc import Mapping

from stabilizer.backends.base import SessionGone, SessionState, SessionTaken
from stabilizer.backends.redis.batcher import ScriptBatcher
from stabilizer.backends.redis.core import RedisCore, text
from stabilizer.backends.redis.keys import parse_position
from stabilizer.backends.redis.presence import RedisPresence
from stabilizer.backends.redis.spread import SpreadSteps
from stabilizer.pure.streams import ALL, client_stream, session_streams, user_stream


class RedisSessions:
    """Resumable sessions, cluster-wide."""

    def __init__(self, core: RedisCore, presence: RedisPresence, spread: SpreadSteps) -> None:
        self._core = core
        self._presence = presence
        self._spread = spread
        # the resumes of a reconnect storm share round trips
        self._loads = ScriptBatcher(core, core.scripts.load_session, "load_session")
        self._opens = ScriptBatcher(core, core.scripts.open_session, "open_session")
        self._holders = ScriptBatcher(core, core.scripts.session_holder, "session_holder")
        # the first read of an end without history (every connect and disconnect when
        # presence lives in other slots)
        self._counts = ScriptBatcher(core, core.scripts.count_groups, "end_session")

    async def load(self, client_id: str) -> SessionState | None:
        """One script: the session's groups and user data, if it exists."""
        core = self._core
        keys = core.keys
        reply = await self._loads.submit(
            [keys.session(client_id), keys.client_groups(client_id)], [client_id])
        if not int(reply[0]):
            return None
        groups = sorted(text(g) for g in reply[1])
        user_data: dict[str, bytes] = {}
        baselines: dict[str, tuple[int, str]] = {}
        pairs = reply[2:]
        for i in range(0, len(pairs) - 1, 2):
            name, value = text(pairs[i]), bytes(pairs[i + 1])
            if name.startswith("u:"):
                user_data[name[2:]] = value
            elif (position := parse_position(value)) is not None:
                baselines[name[2:]] = position
        return SessionState(groups, user_data, baselines)

    async def activate(self, client_id: str, *, fresh: bool, user_id: str | None = None,
                       conn_id: str | None = None,
                       since: Mapping[str, tuple[int, str]] | None = None,
                       ) -> dict[str, tuple[int, str]]:
        """One script: mark the session live and held by `conn_id`; a fresh one first ends
        any earlier session (its groups included) and records (and returns) the baselines
        of the client's streams (those `since` gives, else where they stand then). Not
        when presence names another connection (in the
        script, or read first where presence lives in other slots): SessionTaken; nor (not
        `fresh`) when the session ended since it was loaded: SessionGone."""
        core = self._core
        keys = core.keys
        guard: list[str] = []
        if conn_id and keys.spread and keys.buckets == 1:
            guard = [keys.presence(0)]  # (the first step's slot: the namespace's)
        elif conn_id:
            found = await self._guard(client_id, conn_id)
            if found is None:
                raise SessionTaken(client_id)
            guard = found
        given = [] if since is None else [
            f"{at[0]}|{at[1]}" if (at := since.get(stream)) is not None else ""
            for stream in session_streams(client_id, user_id)]
        if keys.spread:
            raw = await self._spread.open(client_id, fresh=fresh, user_id=user_id,
                                          conn_id=conn_id or "", guard=guard, given=given)
            if raw is None:
                raise SessionTaken(client_id)
            return {stream: position for stream, value in raw.items()
                    if (position := parse_position(value.encode())) is not None}
        script_keys = [keys.session(client_id), keys.away, keys.stream_meta(ALL),
                       keys.stream_meta(client_stream(client_id)), keys.client_groups(client_id)]
        if user_id is not None:
            script_keys.append(keys.stream_meta(user_stream(user_id)))
        script_keys += guard
        reply = await self._opens.submit(
            script_keys,
            [client_id, "1" if fresh else "0", keys.group_prefix, *core.event_args(),
             core.node_id, core.publish_command, user_id or "", conn_id or "",
             str(len(script_keys)) if guard else "", *given])
        if reply is None:
            raise SessionTaken(client_id)
        if reply == 0:
            raise SessionGone(client_id)
        return {text(reply[i]): position for i in range(0, len(reply) - 1, 2)
                if (position := parse_position(bytes(reply[i + 1]))) is not None}

    async def held(self, client_id: str, conn_id: str) -> bool:
        """One script: the session's holder is `conn_id` (a resume's check that the store
        kept what it held when the resume took the session over)."""
        holder = await self._holders.submit([self._core.keys.session(client_id)], [])
        return holder is not None and text(holder) == conn_id

    async def save_user_data(self, client_id: str, key: str, value: bytes) -> None:
        """One script: set one user-data field of the session, if it exists (as the
        memory backend does: nothing for a client whose session never opened)."""
        core = self._core
        await core.call(core.scripts.save_user_data(
            keys=[core.keys.session(client_id)], args=[f"u:{key}", value]), "save_user_data")

    async def suspend(self, client_id: str, ttl: float, *, conn_id: str | None = None) -> None:
        """Expire the session after `ttl` and put the client on the away list; with
        `conn_id` (the closing connection), nothing if the client's presence names another
        connection (in the script, or read first when presence lives in other slots)."""
        core = self._core
        keys = core.keys
        if keys.spread and conn_id is not None and keys.buckets == 1:
            # the guard with the away list (both the namespace's), then the expiry
            done = await core.call(core.scripts.suspend_session(
                keys=[keys.away, keys.away, keys.presence(0)],
                args=[int(ttl * 1000), client_id, conn_id, "1"]), "suspend")
            if int(done):
                await core.call(core.client.pexpire(keys.session(client_id),
                                                    int(ttl * 1000) + 1000), "suspend")
            return
        if keys.spread:
            if conn_id is None or await self._guard(client_id, conn_id) is not None:
                await self._spread.suspend([client_id], int(ttl * 1000))
            return
        if conn_id is None:
            await core.call(core.scripts.suspend(
                keys=[keys.away], args=[int(ttl * 1000), keys.session_prefix, client_id],
            ), "suspend")
            return
        presence = await self._guard(client_id, conn_id)
        if presence is None:
            return
        await core.call(core.scripts.suspend_session(
            keys=[keys.away, keys.session(client_id), *presence],
            args=[int(ttl * 1000), client_id, conn_id],
        ), "suspend")

    async def end(self, client_id: str, *, conn_id: str | None = None,
                  opening: bool = False, held_until: int | None = None) -> list[str]:
        """One script: leave every group, drop the session; with `conn_id` (the closing
        connection, or an `opening` one ending what its client had), nothing if the
        client's presence names another connection. `held_until` (the buckets layout's
        sweep): nothing unless the client is still held on the away list until then."""
        core = self._core
        keys = core.keys
        if not core.sessions and conn_id is not None and keys.split_presence:
            # no session to drop (and its presence is read apart): the client's group set
            # is read first, the guard only for a client that has groups to leave (an
            # opening connection also takes the client off the away list there: see
            # COUNT_GROUPS; spread: its first step drops the sweep's fence)
            if keys.spread:
                return await self._spread.end(
                    client_id, guard=lambda: self._guard(client_id, conn_id))
            count = (self._counts.submit([keys.client_groups(client_id), keys.away],
                                         [client_id]) if opening
                     else self._counts.submit([keys.client_groups(client_id)], []))
            if not int(await count):
                return []
        presence = [] if conn_id is None else await self._guard(client_id, conn_id)
        if presence is None:
            return []
        if keys.spread:
            return await self._spread.end(client_id)
        reply = await core.call(core.scripts.end_session(
            keys=[keys.client_groups(client_id), keys.session(client_id), keys.away,
                  *presence],
            args=[client_id, keys.group_prefix, *core.event_args(), core.node_id,
                  core.publish_command, conn_id or "",
                  "" if held_until is None else held_until],
        ), "end_session")
        return [] if reply is None else sorted(text(g) for g in reply)

    async def _guard(self, client_id: str, conn_id: str) -> list[str] | None:
        """The presence key a guarded script checks in its own slot ([] when presence lives
        in other slots: then it is read first, one more round trip and not atomic with the
        script); None when another connection of the client owns the session."""
        keys = self._core.keys
        if not keys.split_presence:
            return [keys.presence(0)]
        located = await self._presence.locate(client_id)
        return None if located is not None and located.conn_id != conn_id else []

    async def sweep(self, limit: int = 100) -> list[str]:
        """One script: end the sessions whose time ran out."""
        core = self._core
        keys = core.keys
        if keys.spread:
            return await self._spread.sweep(limit)
        if keys.buckets != 1:
            return await self._sweep_across_slots(limit)
        reply = await core.call(core.scripts.sweep(
            keys=[keys.away, keys.presence(0)],
            args=[limit, keys.client_groups_prefix, keys.group_prefix, keys.session_prefix,
                  *core.event_args(), core.node_id, core.publish_command],
        ), "sweep")
        return [text(cid) for cid in reply]

    async def _sweep_across_slots(self, limit: int) -> list[str]:
        """The sweep when presence lives in other hash slots: a few round trips per client
        (sessions end rarely; no script may span slots). The due clients are taken as the
        spread layout's sweep takes them (held for the lease until their end takes them
        off the list), then each ends in one script, unless a connection of it began since
        its presence was read (it took the client off the list: the end stands down)."""
        deadline, due = await self._spread.take_due(limit)
        for client_id in due:
            await self.end(client_id, held_until=deadline)
        return due
