"""The Prometheus exporter: what a scrape shows, cluster gauge caching, registry isolation."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stabilizer import (
    ConfigError,
    MemoryBackend,
    MemoryHub,
    WebSocketConfig,
    WebSocketConnectionManager,
    metrics,
)
from stabilizer.metrics import (
    CONTENT_TYPE,
    COUNTERS,
    MetricsExporter,
    PoolView,
    StabilizerCollector,
    exporter_for,
    metrics_response,
)
from stabilizer.stats import NodeStats
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

QUIET: dict[str, Any] = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    for (sample, sample_labels), found in scraped.items():
        if sample == name and all(item in sample_labels for item in labels.items()):
            return found
    return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_node_counter_has_a_prometheus_name() -> None:
    counters = set(NodeStats().as_dict())
    names = [name for name, _ in COUNTERS.values()]

    assert set(COUNTERS) == counters
    assert len(set(names)) == len(names)
    assert all(n.startswith("stabilizer_") and not n.endswith("_total") for n in names)


async def test_a_scrape_shows_connections_traffic_and_fanout(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(node_id="n1", **QUIET))
    alice, bob = FakeSocket("alice"), FakeSocket("bob")
    await manager.connect("alice", alice)
    await manager.connect("bob", bob)
    await manager.broadcast({"text": "hi"})
    await bob.expect('{"text":"hi"}')

    scraped = samples(await metrics_response(manager))

    assert value(scraped, "stabilizer_connections", node_id="n1") == 2
    assert value(scraped, "stabilizer_connections_opened_total", node_id="n1") == 2
    assert value(scraped, "stabilizer_messages_out_total", node_id="n1") == 2
    assert value(scraped, "stabilizer_messages_out_bytes_total") == 2 * len('{"text":"hi"}')
    assert value(scraped, "stabilizer_broadcasts_total") == 1
    assert value(scraped, "stabilizer_broadcast_fanout_seconds_count", node_id="n1") == 1
    assert value(scraped, "stabilizer_broadcast_fanout_seconds_bucket", le="+Inf") == 1
    assert value(scraped, "stabilizer_accepting") == 1
    assert value(scraped, "stabilizer_info", node_id="n1", backend="memory") == 1
    assert value(scraped, "stabilizer_cluster_connections") is None  # one node: no cluster
    assert all(dict(labels)["node_id"] == "n1" for _, labels in scraped)


async def test_outbox_gauges_count_frames_waiting_behind_a_slow_socket(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(max_concurrent_broadcast=1, **QUIET))  # 1 per slice
    slow, fast = FakeSocket("slow"), FakeSocket("fast")
    slow.gate.clear()  # the first frame is stuck in send(); the rest queue behind it
    await manager.connect("slow", slow)
    await manager.connect("fast", fast)
    for n in range(4):
        await manager.broadcast(f"frame-{n}")

    scraped = samples(await metrics_response(manager))

    assert value(scraped, "stabilizer_outbox_frames") == 3
    assert value(scraped, "stabilizer_outbox_max_frames") == 3
    assert value(scraped, "stabilizer_outbox_bytes") == 3 * len("frame-0")
    assert value(scraped, "stabilizer_memory_bytes") == manager.total_memory()
    slow.gate.set()
    await slow.expect("frame-3")
    drained = samples(await metrics_response(manager))
    assert value(drained, "stabilizer_outbox_frames") == 0


async def test_a_collector_in_another_registry_works_without_refresh(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(node_id="n1", **QUIET))
    slow = FakeSocket("slow")
    slow.gate.clear()
    await manager.connect("slow", slow)
    await manager.broadcast("one")
    await manager.broadcast("two")
    registry = CollectorRegistry()
    registry.register(StabilizerCollector(manager))

    scraped = samples(generate_latest(registry))

    assert value(scraped, "stabilizer_outbox_frames", node_id="n1") == 1
    assert value(scraped, "stabilizer_connections") == 1
    slow.gate.set()  # let shutdown drain it


async def test_backend_operations_are_histograms_and_error_counters_by_operation(
    make_manager: ManagerFactory,
) -> None:
    manager = make_manager(WebSocketConfig(node_id="n1", **QUIET))
    stats = manager.backend.stats  # every backend keeps them (the memory one measures nothing)
    stats.observe("register", 0.0007, True)
    stats.observe("register", 3.0, False)
    stats.observe("publish", 0.002, True)

    scraped = samples(await metrics_response(manager))

    seconds = "stabilizer_backend_operation_seconds"
    assert value(scraped, f"{seconds}_count", operation="register") == 2
    assert value(scraped, f"{seconds}_bucket", operation="register", le="0.001") == 1
    assert value(scraped, f"{seconds}_bucket", operation="register", le="2.5") == 1
    assert value(scraped, f"{seconds}_bucket", operation="register", le="+Inf") == 2
    assert value(scraped, f"{seconds}_sum", operation="register") == pytest.approx(3.0007)
    assert value(scraped, "stabilizer_backend_operation_errors_total",
                 operation="register", node_id="n1") == 1
    assert value(scraped, "stabilizer_backend_operation_errors_total", operation="publish") is None


async def test_cluster_gauges_are_cached_between_scrapes(make_manager: ManagerFactory) -> None:
    hub, clock = MemoryHub(), FakeClock()
    a = make_manager(WebSocketConfig(node_id="a", **QUIET), backend=MemoryBackend(hub))
    b = make_manager(WebSocketConfig(node_id="b", **QUIET), backend=MemoryBackend(hub))
    await a.connect("alice", FakeSocket("alice"))
    await b.connect("bob", FakeSocket("bob"))
    exporter = MetricsExporter(a, cluster_max_age=5.0, clock=clock)

    first = samples(await exporter.render())
    await b.connect("carol", FakeSocket("carol"))
    clock.now += 4.9
    cached = samples(await exporter.render())
    clock.now += 0.1
    refreshed = samples(await exporter.render())

    assert value(first, "stabilizer_cluster_connections", node_id="a") == 2
    assert value(first, "stabilizer_cluster_nodes") == 2
    assert value(cached, "stabilizer_cluster_connections") == 2
    assert value(refreshed, "stabilizer_cluster_connections") == 3
    assert value(refreshed, "stabilizer_connections") == 1


async def test_a_hanging_store_gives_up_on_the_cluster_gauges_after_op_timeout(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = MemoryBackend(MemoryHub())
    manager = make_manager(WebSocketConfig(op_timeout=0.05, **QUIET), backend=backend)
    await manager.connect("alice", FakeSocket("alice"))

    async def never_answers() -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(backend.presence, "count", never_answers)
    async with asyncio.timeout(30):  # hang guard: op_timeout (0.05 s) must end the wait
        scraped = samples(await metrics_response(manager))

    assert value(scraped, "stabilizer_cluster_connections") is None  # absent, not stale
    assert value(scraped, "stabilizer_connections") == 1


async def test_each_manager_has_its_own_registry_and_none_is_kept_alive() -> None:
    first = WebSocketConnectionManager(WebSocketConfig(node_id="first"))
    second = WebSocketConnectionManager(WebSocketConfig(node_id="second"))

    assert exporter_for(first) is exporter_for(first)
    assert exporter_for(first).registry is not exporter_for(second).registry
    assert b'node_id="second"' not in await metrics_response(first)
    assert REGISTRY.get_sample_value("stabilizer_connections", {"node_id": "first"}) is None
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None


def test_the_content_type_is_the_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_without_prometheus_client_the_core_works_and_metrics_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "stabilizer.metrics")
    monkeypatch.delitem(sys.modules, "stabilizer.fastapi", raising=False)  # imported again

    with pytest.raises(ImportError, match=r"pip install 'fastapi-stabilizer\[metrics\]'"):
        importlib.import_module("stabilizer.metrics")
    plain_router = importlib.import_module("stabilizer.fastapi").router
    plain = WebSocketConnectionManager(WebSocketConfig())
    assert "/metrics" not in [getattr(route, "path", None)
                              for route in plain_router(plain).routes]
    enabled = WebSocketConnectionManager(WebSocketConfig(enable_metrics=True))
    with pytest.raises(ConfigError, match="prometheus-client"):
        plain_router(enabled)



async def test_concurrent_scrapes_share_one_survey_and_none_stalls_the_loop(
    make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two scrapes at once: each refresh surveyed the pool into the collector's one slot, so
    one scrape took the other's survey and the other, finding none, surveyed the whole pool
    in one synchronous pass (what the slices are there to avoid)."""
    manager = make_manager(WebSocketConfig(max_concurrent_broadcast=2, **QUIET))
    for index in range(6):
        await manager.connect(f"c{index}", FakeSocket(f"c{index}"))
    surveys: list[bool] = []  # per survey: did it pause between slices (True) or not
    real = metrics.survey

    def watched(manager: Any, view: PoolView) -> Iterator[None]:
        paused = False
        for step in real(manager, view):
            paused = True
            yield step
        surveys.append(paused)

    monkeypatch.setattr(metrics, "survey", watched)
    first, second = await asyncio.gather(metrics_response(manager),
                                         metrics_response(manager))
    assert value(samples(first), "stabilizer_connections") == 6
    assert value(samples(second), "stabilizer_connections") == 6
    assert surveys == [True]  # one survey, a slice at a time, for both scrapes
