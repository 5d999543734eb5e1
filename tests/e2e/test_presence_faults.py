"""Presence when replicas fail, on real uvicorn replicas sharing one real Redis
(docs/protocol.md 6.8): the members of a SIGKILLed replica leave once each, in one diff per
channel, and a storm of reconnecting members ends in the exact presence on every follower.

The followers are raw v2 sockets (presence_clients.py) that keep every frame they got, so
the tests count diff frames and the joins and leaves in them, not only the end state."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tests.e2e.conftest import V2Replicas
from tests.e2e.presence_clients import Follower, changes_by_client, follower
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

A, B = "presence:a", "presence:b"
PER_REPLICA = 8


def groups_of(index: int) -> list[str]:
    """Member `index` of a replica: 0-4 follow A, 3-7 follow B (3 and 4 both)."""
    return [group for group, inside in ((A, index < 5), (B, index >= 3)) if inside]


def client_ids(presence: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {item["client_id"] for items in presence.values() for item in items}


async def _close_all(clients: list[Follower]) -> None:
    for one in clients:
        await one.aclose()


async def sees(one: Follower, expected: dict[str, set[str]]) -> None:
    """Wait until `one`'s copy of each channel lists exactly the client ids expected."""
    def holds() -> bool:
        return all(client_ids(one.presence(group)) == ids for group, ids in expected.items())
    await one.until(holds)


async def server_presence(server: UvicornProcess, group: str) -> dict[str, Any]:
    status, body = await asyncio.to_thread(server.get, f"/admin/presence/{group}")
    assert status == 200, body
    return dict(body)


async def test_the_members_of_a_sigkilled_replica_leave_once_in_one_diff_per_channel(
    v2_replicas: V2Replicas,
) -> None:
    servers = v2_replicas(3, node_ttl=1, presence_diff_window=0)  # one diff by construction
    async with contextlib.AsyncExitStack() as stack:
        placed: list[tuple[int, Follower, list[str]]] = []  # (replica, member, its groups)
        for replica, server in enumerate(servers):
            for index in range(PER_REPLICA):
                member = await stack.enter_async_context(
                    follower(server, f"m{replica}-{index}"))
                for group in groups_of(index):
                    await member.follow(group)
                placed.append((replica, member, groups_of(index)))
        everyone = {group: {m.client_id for _, m, gs in placed if group in gs} for group in (A, B)}
        for _, member, groups in placed:
            await sees(member, {group: everyone[group] for group in groups})

        survivors = [(m, gs) for replica, m, gs in placed if replica != 2]
        killed = {group: {m.client_id for r, m, gs in placed if r == 2 and group in gs}
                  for group in (A, B)}
        left = {group: everyone[group] - killed[group] for group in (A, B)}
        marks = {m.client_id: len(m.frames) for m, _ in survivors}
        await asyncio.to_thread(servers[2].kill)
        for member, groups in survivors:
            await sees(member, {group: left[group] for group in groups})

        # A barrier: a later join reaches each follower after anything the reaping sent.
        sentinel = await stack.enter_async_context(follower(servers[0], "sentinel"))
        for group in (A, B):
            await sentinel.follow(group)
        final = {group: left[group] | {sentinel.client_id} for group in (A, B)}
        for member, groups in survivors:
            await sees(member, {group: final[group] for group in groups})

        for group in (A, B):
            on_server = [await server_presence(server, group) for server in servers[:2]]
            assert on_server[0] == on_server[1]
            assert client_ids(on_server[0]) == final[group]
            for member, groups in survivors:
                if group in groups:
                    assert member.presence(group) == on_server[0]
        for member, groups in survivors:
            for group in groups:
                diffs = member.diffs(group, since=marks[member.client_id])
                assert [client_ids(diff["leaves"]) for diff in diffs] == [killed[group], set()]
                assert [client_ids(diff["joins"]) for diff in diffs] == [
                    set(), {sentinel.client_id}]
                history = changes_by_client(member.frames, group)
                for client_id in final[group]:
                    assert history[client_id] == ["join"], (client_id, history[client_id])
                for client_id in killed[group]:
                    assert history[client_id] == ["join", "leave"], (
                        client_id, history[client_id])


STORM = "presence:storm"
CLIENTS = 500


def names_in(presence: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """client id -> the name in its metadata."""
    return {item["client_id"]: item["meta"]["name"] for items in presence.values()
            for item in items}


async def sees_names(one: Follower, expected: dict[str, str], timeout: float = 60.0) -> None:
    """Wait until `one`'s copy of the storm's channel is exactly `expected`."""
    def holds() -> bool:
        return names_in(one.presence(STORM)) == expected
    await one.until(holds, timeout)


def alternates(history: list[str]) -> bool:
    """join, leave, join, ... as a presence of one connection must go."""
    return all(event == ("join" if n % 2 == 0 else "leave") for n, event in enumerate(history))


async def test_a_reconnect_storm_of_500_members_ends_in_the_exact_presence(
    v2_replicas: V2Replicas,
) -> None:
    left, right = v2_replicas(2)
    scene = asyncio.Semaphore(25)  # sockets opening at once while the scene is set

    async def member(server: UvicornProcess, n: int, slots: asyncio.Semaphore) -> Follower:
        """Storm member n (user s<n> on device d): every 25th follows the presence too."""
        async with slots:
            one = await Follower.open(server, f"s{n}", device="d")
            if n % 25 == 0:
                await one.follow(STORM)
            else:
                await one.subscribe(STORM)
            return one

    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(follower(server, f"watch-{n}"))
                    for n, server in enumerate((left, right))]
        for watcher in watchers:
            await watcher.follow(STORM)
        members = await asyncio.gather(*(member(left, n, scene) for n in range(CLIENTS)))
        stack.push_async_callback(_close_all, members)
        everyone = {m.client_id: f"s{n}" for n, m in enumerate(members)}
        everyone.update({w.client_id: f"watch-{n}" for n, w in enumerate(watchers)})
        followers = [m for n, m in enumerate(members) if n % 25 == 0]
        for one in [*watchers, *followers]:
            await sees_names(one, everyone)

        for one in members:  # the storm: every member's connection drops at once ...
            one.ws.transport.abort()
        for one in members:
            assert one.reader is not None
            await one.reader
        # ... and comes back on the other replica, as the same client (same device)
        storm = asyncio.Semaphore(CLIENTS)  # all at once
        members[:] = await asyncio.gather(*(member(right, n, storm) for n in range(CLIENTS)))
        assert {m.client_id for m in members} == set(everyone) - {w.client_id for w in watchers}
        followers = [m for n, m in enumerate(members) if n % 25 == 0]
        for one in [*watchers, *followers]:
            await sees_names(one, everyone, timeout=90)

        # A barrier: a later join reaches each follower after anything the storm sent.
        sentinel = await stack.enter_async_context(follower(left, "sentinel"))
        await sentinel.subscribe(STORM)
        final = {**everyone, sentinel.client_id: "sentinel"}
        for one in [*watchers, *followers]:
            await sees_names(one, final)

        on_server = [await server_presence(server, STORM) for server in (left, right)]
        assert on_server[0] == on_server[1]
        assert names_in(on_server[0]) == final
        for one in [*watchers, *followers]:
            assert one.presence(STORM) == on_server[0]
            # How many diffs the changes took depends on when they reached each replica
            # (each drop and return is a script of its own): only that none is empty holds.
            diffs = one.diffs(STORM)
            assert all(diff["joins"] or diff["leaves"] for diff in diffs)
            history = changes_by_client(one.frames, STORM)
            assert set(history) == set(final)
            for client_id, events in history.items():
                # each change once: a drop is one leave and the return one join (or neither,
                # when both fell in one window), never a repeat
                assert alternates(events), (client_id, events)
                assert len(events) in (1, 3), (client_id, events)
