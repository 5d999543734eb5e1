"""The Python client drops `resume` and `unsubscribed` frames it cannot act on (a field it
reads is missing or of the wrong type), with a warning, as the browser client does: neither
on_control nor on_resume hears of them, and no subscription ends. Before, a bare
{"type":"resume"} (from a broken or hostile server) reached on_control and became a
resume the application was told of (recovered false, nothing replayed), and an
`unsubscribed` frame without a channel reached on_control."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from stabilizer.client.frames import Frames
from stabilizer.client.inbox import Inbox
from stabilizer.client.requests import Subscriptions
from stabilizer.client.v2 import ProtocolV2
from stabilizer.pure.client_protocol import ResumeResult
from stabilizer.pure.client_v2 import malformed

MALFORMED_RESUMES: list[dict[str, Any]] = [
    {"type": "resume"},
    {"type": "resume", "recovered": "yes", "replayed": 0, "failed": []},
    {"type": "resume", "recovered": True},
    {"type": "resume", "recovered": False, "replayed": -1, "failed": []},
    {"type": "resume", "recovered": False, "replayed": True, "failed": []},
    {"type": "resume", "recovered": False, "replayed": 0, "failed": "all"},
    {"type": "resume", "recovered": False, "replayed": 0, "failed": [5]},
]
MALFORMED_ENDS: list[dict[str, Any]] = [
    {"type": "unsubscribed"},
    {"type": "unsubscribed", "channel": {}},
    {"type": "unsubscribed", "channel": 5, "reason": "server"},
]


def frames_of(*, v2: bool) -> tuple[Frames, list[object], list[ResumeResult]]:
    controls: list[object] = []
    resumes: list[ResumeResult] = []
    protocol = ProtocolV2(None, device="d", params=None, timeout=1.0) if v2 else None
    frames = Frames(Inbox(8), client_id=None, token=None, v2=protocol, send_timeout=1.0,
                    on_control=controls.append, on_resume=resumes.append,
                    subscriptions=Subscriptions() if v2 else None)
    frames.history = True
    return frames, controls, resumes


@pytest.mark.parametrize("v2", [False, True], ids=["plain", "v2"])
@pytest.mark.parametrize("frame", MALFORMED_RESUMES + MALFORMED_ENDS)
async def test_a_frame_the_client_cannot_act_on_is_dropped_with_a_warning(
        frame: dict[str, Any], v2: bool, caplog: pytest.LogCaptureFixture) -> None:
    frames, controls, resumes = frames_of(v2=v2)
    with caplog.at_level(logging.WARNING, "stabilizer.client"):
        await frames.handle(object(), json.dumps(frame))  # type: ignore[arg-type]
    if not v2 and frame["type"] == "unsubscribed":
        return  # (no plain frame: application text, delivered as it is)
    assert controls == []
    assert resumes == []
    assert frames.last_resume is None
    assert any("dropping" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("v2", [False, True], ids=["plain", "v2"])
async def test_well_formed_ones_are_acted_on(v2: bool) -> None:
    frames, controls, resumes = frames_of(v2=v2)
    resume = {"type": "resume", "recovered": False, "replayed": 2, "failed": ["all"]}
    await frames.handle(object(), json.dumps(resume))  # type: ignore[arg-type]
    assert controls == [resume]
    assert resumes == [ResumeResult(recovered=False, replayed=2, failed=("all",))]


def test_malformed_names_what_is_missing() -> None:
    assert malformed({"type": "resume"}) == "a resume frame without recovered, replayed and failed"
    assert malformed({"type": "unsubscribed"}) == "an unsubscribed frame without a channel"
    assert malformed({"type": "resume", "recovered": True, "replayed": 0, "failed": []}) is None
    assert malformed({"type": "unsubscribed", "channel": "room"}) is None
    assert malformed({"type": "novelty"}) is None
