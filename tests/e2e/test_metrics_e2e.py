"""GET /metrics from a real uvicorn process on Redis: parseable, and moving with traffic."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Launcher
from tests.support.clients import open_client, recv_json
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = pytest.mark.e2e

QUIET = {"heartbeat_interval": 3600, "heartbeat_timeout": 3600}
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: UvicornProcess) -> tuple[str, Scrape]:
    """GET /metrics; return the content type and every sample."""
    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as resp:
        content_type, text = resp.headers["content-type"], resp.read().decode()
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    return content_type, found


def sample(scraped: Scrape, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def operations(scraped: Scrape) -> dict[str, float]:
    """Redis operations counted so far, by operation."""
    return {dict(labels)["operation"]: v for (name, labels), v in scraped.items()
            if name == "stabilizer_backend_operation_seconds_count"}


@pytest.mark.redis
async def test_metrics_parse_and_counters_move_with_traffic(
    launch: Launcher, redis_url: str, namespace: str,
) -> None:
    server = launch(enable_metrics=True, redis_url=redis_url, namespace=namespace,
                    node_id="metrics-node", **QUIET)
    alice, _ = await open_client(f"{server.ws}/ws/alice")
    bob, _ = await open_client(f"{server.ws}/ws/bob")
    try:
        content_type, before = await asyncio.to_thread(scrape, server)
        await alice.send("hello")
        assert await recv_json(bob) == {"from": "alice", "text": "hello"}
        # bob has it once the local fan-out ran; the broadcast (and its counters) ends
        # after its PUBLISH to the other nodes returned: wait for that, bounded
        async with asyncio.timeout(5):
            while True:
                _, after = await asyncio.to_thread(scrape, server)
                if sample(after, "stabilizer_broadcasts_total") > sample(
                        before, "stabilizer_broadcasts_total"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await alice.close()
        await bob.close()

    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert sample(after, "stabilizer_connections", node_id="metrics-node") == 2
    assert sample(before, "stabilizer_cluster_connections") == 2  # presence, from Redis
    assert sample(after, "stabilizer_cluster_nodes") == 1
    assert sample(after, "stabilizer_backend_available") == 1
    moved = {name: sample(after, name) - sample(before, name) for name in (
        "stabilizer_messages_in_total", "stabilizer_messages_out_total",
        "stabilizer_broadcasts_total", "stabilizer_broadcast_fanout_seconds_count")}
    assert moved == {"stabilizer_messages_in_total": 1, "stabilizer_messages_out_total": 1,
                     "stabilizer_broadcasts_total": 1,
                     "stabilizer_broadcast_fanout_seconds_count": 1}
    assert sample(after, "stabilizer_messages_out_bytes_total") > sample(
        before, "stabilizer_messages_out_bytes_total")
    assert operations(after)["publish"] == operations(before).get("publish", 0) + 1
    assert operations(after)["register"] == 2  # one Redis script per connection


async def test_metrics_are_not_served_unless_enabled(launch: Launcher) -> None:
    server = launch(**QUIET)

    status, _ = await asyncio.to_thread(server.get, "/metrics")

    assert status == 404
