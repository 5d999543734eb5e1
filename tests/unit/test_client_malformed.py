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


HUGE = "1" + "0" * 400  # valid JSON, too large for a float
NO_SOCKET: Any = object()  # (no frame here is answered on its socket)


@pytest.mark.parametrize("expires_at", [HUGE, "1e999", "-1e999", "true", '"soon"', "null"])
async def test_a_refreshed_frame_whose_expiry_is_no_finite_number_means_no_expiry(
        expires_at: str) -> None:
    """Before, 10**400 raised OverflowError out of the read loop: the client ended ("client
    failed unexpectedly"); 1e999 (infinity) was kept as the expiry."""
    frames, controls, _ = frames_of(v2=True)
    protocol = frames._v2
    assert protocol is not None
    protocol.expires_at = 1795482348.0
    raw = '{"type":"refreshed","expires_at":' + expires_at + "}"
    await frames.handle(NO_SOCKET, raw)
    assert protocol.expires_at is None
    assert [frame["type"] for frame in controls] == ["refreshed"]  # (on_control sees it)
    await frames.handle(NO_SOCKET, '{"type":"refreshed","expires_at":1795485948}')
    assert protocol.expires_at == 1795485948.0


def refreshed_raises(frames: Any, error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make acting on a `refreshed` frame raise `error`."""

    def raising(frame: object) -> None:
        raise error

    protocol = frames._v2
    assert protocol is not None
    monkeypatch.setattr(protocol, "on_refreshed", raising)


async def test_a_frame_whose_values_break_its_handling_is_dropped_and_reading_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A value no check foresaw (here, as the 10**400 expiry once did, an OverflowError out
    of acting on a `refreshed` frame) costs that frame, logged with its type, never the
    connection; the frames after it are acted on."""
    frames, _, resumes = frames_of(v2=True)
    refreshed_raises(frames, OverflowError("int too large to convert to float"), monkeypatch)
    with caplog.at_level(logging.WARNING, "stabilizer.client"):
        await frames.handle(NO_SOCKET, '{"type":"refreshed","expires_at":1}')
    assert any("dropping a 'refreshed' frame" in record.getMessage() and record.exc_info
               for record in caplog.records)
    resume = {"type": "resume", "recovered": True, "replayed": 0, "failed": []}
    await frames.handle(NO_SOCKET, json.dumps(resume))
    assert resumes == [ResumeResult(recovered=True)]


async def test_a_bug_is_not_taken_for_a_bad_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the errors of a value of an unforeseen shape are caught: any other exception
    still ends the client loudly ("client failed unexpectedly")."""
    frames, _, _ = frames_of(v2=True)
    refreshed_raises(frames, RuntimeError("a bug"), monkeypatch)
    with pytest.raises(RuntimeError, match="a bug"):
        await frames.handle(NO_SOCKET, '{"type":"refreshed","expires_at":1}')
