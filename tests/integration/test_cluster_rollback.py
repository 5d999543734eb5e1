"""A Redis Cluster master restarts from a snapshot older than its last writes, in the spread
key layout (each group's keys in the group's slot, each client's group set in the
client's): the group's master gives back a membership that was left since, while the
client's master (not restarted) still has the leave. The settle after the incarnation
change (its check for memberships given back, after the presence resync) must take the
member out of the group again, or it stays listed for good (by get_group_members and
get_presence) while its node delivers it nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.backends.redis.keys import KeyLayout
from tests.conftest import ManagerFactory
from tests.integration.test_spread_unlist import UNLISTED
from tests.integration.test_store_incarnation import LogWatch, log
from tests.support.fakes import FakeSocket
from tests.support.redis_server import RedisClusterServers, RedisServer, cluster_cli

pytestmark = [pytest.mark.redis, pytest.mark.slow]

__all__ = ["log"]  # (a fixture)

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
#: A bound, not a wait: the restart and the next step take a few seconds.
RECOVERY = 30.0


def apart(cluster: RedisClusterServers, keys: KeyLayout) -> tuple[str, str]:
    """A group and a client whose keys live on two masters, neither the namespace's."""
    home = cluster.master_of(keys.nodes)
    group = next(g for g in (f"room{i}" for i in range(200))
                 if cluster.master_of(keys.group(g)) is not home)
    there = cluster.master_of(keys.group(group))
    client = next(c for c in (f"k{i}" for i in range(200))
                  if cluster.master_of(keys.client_groups(c)) not in (home, there))
    return group, client


def restart(cluster: RedisClusterServers, master: RedisServer) -> None:
    """Restart `master` from its snapshot; return once every master serves its slots again
    (a bounded poll: the cluster's own gossip has no event to wait on)."""
    master.restart()
    deadline = time.monotonic() + RECOVERY
    while not all("cluster_state:ok" in subprocess.run(
            [cluster_cli(), "-p", str(node.port), "cluster", "info"],
            capture_output=True, text=True, timeout=10).stdout for node in cluster.nodes):
        assert time.monotonic() < deadline, "the cluster did not recover"
        time.sleep(0.05)


async def test_a_membership_a_restarted_group_master_gives_back_is_left_again(
    private_cluster: RedisClusterServers, namespace: str, make_manager: ManagerFactory,
    log: LogWatch,
) -> None:
    manager: WebSocketConnectionManager = make_manager(WebSocketConfig(
        redis_url=private_cluster.url, redis_cluster=True, namespace=namespace,
        node_id="x", node_ttl=3.0, op_timeout=1.0, **QUIET))
    await manager.start()
    group, client = await asyncio.to_thread(apart, private_cluster, manager.backend.keys)
    master = await asyncio.to_thread(private_cluster.master_of,
                                     manager.backend.keys.group(group))
    await manager.connect(client, FakeSocket(client))
    await manager.join_group(client, group, presence={"here": True})
    await manager.connect("stays", FakeSocket("stays"))
    await manager.join_group("stays", group, presence={"still": True})
    store = Redis(host="127.0.0.1", port=master.port)
    try:
        await store.save()  # what the restart loads: the client is a member
    finally:
        await store.aclose()
    await manager.leave_group(client, group)
    assert await manager.get_group_members(group) == ["stays"]

    await asyncio.to_thread(restart, private_cluster, master)
    await log.until(UNLISTED, RECOVERY)

    assert await manager.get_group_members(group) == ["stays"]
    assert await manager.get_presence(group) == {
        "stays": [{"client_id": "stays", "meta": {"still": True}}]}
    assert await manager.get_client_groups(client) == []
    for client_id, groups in ((client, set()), ("stays", {group})):
        connection = manager.get_connection(client_id)
        assert connection is not None
        assert connection.groups == groups
