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
            await member.until(lambda m=member, gs=groups: all(  # type: ignore[misc]
                client_ids(m.presence(g)) == everyone[g] for g in gs))

        survivors = [(m, gs) for replica, m, gs in placed if replica != 2]
        killed = {group: {m.client_id for r, m, gs in placed if r == 2 and group in gs}
                  for group in (A, B)}
        left = {group: everyone[group] - killed[group] for group in (A, B)}
        marks = {m.client_id: len(m.frames) for m, _ in survivors}
        await asyncio.to_thread(servers[2].kill)
        for member, groups in survivors:
            await member.until(lambda m=member, gs=groups: all(  # type: ignore[misc]
                client_ids(m.presence(g)) == left[g] for g in gs))

        # A barrier: a later join reaches each follower after anything the reaping sent.
        sentinel = await stack.enter_async_context(follower(servers[0], "sentinel"))
        for group in (A, B):
            await sentinel.follow(group)
        final = {group: left[group] | {sentinel.client_id} for group in (A, B)}
        for member, groups in survivors:
            await member.until(lambda m=member, gs=groups: all(  # type: ignore[misc]
                client_ids(m.presence(g)) == final[g] for g in gs))

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
