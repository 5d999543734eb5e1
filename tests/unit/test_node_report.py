"""NodeReport: what a node writes with its keepalive, read back by every dashboard."""

from __future__ import annotations

import json

import pytest

from stabilizer.backends.base import NodeReport


def test_a_report_survives_its_json() -> None:
    report = NodeReport("n-1", "draining", 1700000000.25, connections=3, messages_in=10,
                        messages_out=40, broadcasts=2, outbox_frames=7, outbox_max_frames=5,
                        backend_latency_ms=0.4, groups={"room": 2, "lobby": 1})
    assert NodeReport.from_json(report.to_json()) == report
    assert NodeReport.from_json(report.to_json().encode()) == report
    idle = NodeReport("n-2", "running", 1.0)
    assert NodeReport.from_json(idle.to_json()) == idle


@pytest.mark.parametrize("change", [
    {"connections": -1}, {"messages_in": "3"}, {"broadcasts": True}, {"at": "now"},
    {"backend_latency_ms": "slow"}, {"groups": {"room": -2}}, {"groups": ["room"]},
    {"node_id": 7},
])
def test_a_malformed_report_is_skipped(change: dict[str, object]) -> None:
    body = json.loads(NodeReport("n", "running", 1.0, groups={"room": 1}).to_json())
    body.update(change)
    assert NodeReport.from_json(json.dumps(body)) is None


@pytest.mark.parametrize("raw", ["", "[]", "{}", "not json", b"\xff"])
def test_what_no_node_wrote_is_skipped(raw: str | bytes) -> None:
    assert NodeReport.from_json(raw) is None
