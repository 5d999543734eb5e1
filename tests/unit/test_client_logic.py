"""The client's pure decisions: backoff, retry advice, close codes, URLs, positions, unwrapping;
and the inbox's bound."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from stabilizer.client import (
    CloseAction,
    Positions,
    ResumeResult,
    RetryPolicy,
    build_url,
    close_action,
    connect,
    control_frame,
    retry_advice_seconds,
    retry_delay,
    unwrap,
)
from stabilizer.client.frames import Frames
from stabilizer.client.inbox import FELL_BEHIND, Inbox
from stabilizer.errors import ConfigError, WireError
from stabilizer.pure.client_protocol import MAX_RESUME_URL
from stabilizer.pure.client_retry import plan_retry, resubscribe_delay


@pytest.mark.parametrize("failures", [0, 1, 3, 10, 40])
def test_backoff_stays_within_the_capped_exponential_bound(failures: int) -> None:
    policy = RetryPolicy(base=0.1, cap=2.0)
    bound = min(2.0, 0.1 * 2**failures)
    delays = [policy.delay(failures) for _ in range(500)]
    assert all(0.0 <= d <= bound for d in delays)
    assert max(delays) > bound * 0.8  # full jitter spreads over the whole window


def test_backoff_is_jittered_not_constant() -> None:
    policy = RetryPolicy(base=1.0, cap=1.0)
    assert len({policy.delay(5) for _ in range(50)}) > 40


@pytest.mark.parametrize("bad", [{"base": 0}, {"cap": -1.0}, {"base": float("inf")},
                                 {"max_attempts": 0}, {"max_advice": 0},
                                 {"stable_after": -1.0}, {"cap": float("nan")}])
def test_retry_policy_rejects_unusable_values(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)  # type: ignore[arg-type]  # each value is deliberately wrong


def test_retry_policy_accepts_an_immediately_stable_connection() -> None:
    assert RetryPolicy(stable_after=0).stable_after == 0


@pytest.mark.parametrize(("reason", "seconds"), [
    ('{"retry_ms": 1830}', 1.83),
    ('{"retry_ms":0}', 0.0),
    ('{"retry_ms": 250.5, "extra": true}', 0.2505),
    ('{"retry_ms": 9999999}', 60.0),         # a server cannot park clients for days
    ("server shutting down", None),           # free text
    ("", None),
    ('{"retry_ms": -5}', None),
    ('{"retry_ms": true}', None),
    ('{"retry_ms": "100"}', None),
    ('{"retry_ms": NaN}', None),
    ('{"retry_ms": Infinity}', None),
    ('{"retry', None),
    ('{"other": 1}', None),
])
def test_retry_advice_parsing(reason: str, seconds: float | None) -> None:
    assert retry_advice_seconds(reason) == seconds


def test_retry_advice_applies_only_to_1012_and_1013() -> None:
    policy = RetryPolicy(base=0.001, cap=0.001)
    assert retry_delay(policy, 3, 1012, '{"retry_ms": 700}') == 0.7
    assert retry_delay(policy, 0, 1013, '{"retry_ms": 50}') == 0.05
    assert retry_delay(policy, 0, 1001, '{"retry_ms": 700}') <= 0.001
    assert retry_delay(policy, 0, 1012, "restarting") <= 0.001  # no advice: own backoff


@pytest.mark.parametrize(("code", "used_token", "action"), [
    (1000, False, CloseAction.STOP),
    (1001, False, CloseAction.RETRY),
    (1006, True, CloseAction.RETRY),
    (1008, False, CloseAction.STOP),
    (1009, False, CloseAction.STOP),
    (1011, False, CloseAction.RETRY),
    (1012, True, CloseAction.RETRY),
    (1013, False, CloseAction.RETRY),
    (4000, True, CloseAction.RETRY),
    (4002, False, CloseAction.RETRY),
    (4499, False, CloseAction.RETRY),
    (4500, True, CloseAction.STOP),
    (4501, True, CloseAction.RETRY_WITHOUT_TOKEN),
    (4502, True, CloseAction.RETRY_WITHOUT_TOKEN),
    (4501, False, CloseAction.STOP),   # only once: the tokenless retry cannot be refused again
    (4503, True, CloseAction.STOP),
    (4999, False, CloseAction.STOP),
])
def test_close_codes_decide_the_next_step(code: int, used_token: bool,
                                          action: CloseAction) -> None:
    assert close_action(code, used_token=used_token) is action


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def test_url_gets_token_and_positions_url_encoded() -> None:
    positions = '{"g:room 1":[42,"hE3kQx"]}'
    url = build_url("ws://h:8000/ws/alice", token="s1.a+b/c=", positions=positions)
    assert url.startswith("ws://h:8000/ws/alice?token=s1.a%2Bb%2Fc%3D&positions=%7B")
    assert _query(url) == {"token": ["s1.a+b/c="], "positions": [positions]}


def test_url_keeps_its_own_query_and_replaces_stale_client_params() -> None:
    url = build_url("wss://h/ws/a?v=2&lang=en%20gb&flag&token=old&positions=%7B%7D",
                    token="new")
    assert url == "wss://h/ws/a?v=2&lang=en%20gb&flag&token=new"
    assert build_url("ws://h/ws/a?token=old") == "ws://h/ws/a"
    assert build_url("ws://h/ws/a") == "ws://h/ws/a"


def test_url_carries_positions_only_while_its_path_and_query_stay_within_6_kib() -> None:
    """Servers read handshake lines of 8 KiB at most (uvicorn never answers a longer one):
    longer positions stay home and the token alone resumes (the server replays from the
    session's start; the client drops what it had)."""
    def positions(count: int) -> str:
        value = {f"g:room-{n}-" + "x" * 40: [n + 1, "AbCdEfGh"] for n in range(count)}
        return json.dumps(value, separators=(",", ":"))

    base = "ws://h/ws/alice?room=1"
    few = build_url(base, token="s1.tok", positions=positions(10))
    assert len(json.loads(_query(few)["positions"][0])) == 10
    many = build_url(base, token="s1.tok", positions=positions(200))
    assert _query(many) == {"room": ["1"], "token": ["s1.tok"]}
    for url in (few, many):
        parts = urlsplit(url)
        assert len(f"{parts.path}?{parts.query}") <= MAX_RESUME_URL


def test_positions_track_the_last_offset_per_stream_and_drop_duplicates() -> None:
    positions = Positions()
    assert positions.encode() is None
    assert [positions.accept("all", n, "e1") for n in (1, 2, 2, 1, 3)] == [
        True, True, False, False, True]
    assert positions.accept("g:room", 7, "e1")
    assert positions.accept("all", 1, "e2")        # new epoch: offsets restarted
    assert not positions.accept("all", 1, "e2")
    assert positions.snapshot() == {"all": (1, "e2"), "g:room": (7, "e1")}
    assert json.loads(positions.encode() or "") == {"all": [1, "e2"], "g:room": [7, "e1"]}


def test_unwrap_returns_the_original_text_or_bytes() -> None:
    text = unwrap({"type": "message", "stream": "all", "offset": 3, "epoch": "e",
                   "data": '{"type": "ping"}'})
    assert (text.stream, text.offset, text.epoch, text.payload) == (
        "all", 3, "e", '{"type": "ping"}')
    binary = unwrap({"type": "message", "stream": "c:bob", "offset": 1, "epoch": "e",
                     "data_b64": "AP8Q"})
    assert binary.payload == b"\x00\xff\x10"


def test_an_unsequenced_message_is_delivered_without_a_position() -> None:
    """The server sends offset and epoch null when its backend could not sequence it."""
    frame = unwrap({"type": "message", "stream": "all", "offset": None, "epoch": None,
                    "data": "during an outage"})
    assert (frame.offset, frame.epoch, frame.payload) == (None, None, "during an outage")


@pytest.mark.parametrize("frame", [
    {"stream": "all", "offset": None, "epoch": "e", "data": "x"},    # half sequenced
    {"stream": "all", "offset": 1, "epoch": None, "data": "x"},
    {"stream": "all", "offset": 1, "epoch": "e"},                    # no data
    {"stream": "all", "offset": "1", "epoch": "e", "data": "x"},
    {"stream": "all", "offset": True, "epoch": "e", "data": "x"},
    {"offset": 1, "epoch": "e", "data": "x"},
    {"stream": "all", "offset": 1, "epoch": "e", "data_b64": "***"},
])
def test_unwrap_rejects_malformed_frames(frame: dict[str, object]) -> None:
    with pytest.raises(WireError):
        unwrap(frame)


def test_only_known_control_types_are_taken_from_the_application() -> None:
    assert control_frame('{"type":"ping","timestamp":1.5}', history=False) == {
        "type": "ping", "timestamp": 1.5}
    assert control_frame('{"type":"chat","text":"hi"}', history=False) is None
    assert control_frame('{"from":"a","text":"{\\"type\\""}', history=False) is None
    assert control_frame("pong", history=False) is None
    assert control_frame('["type"]', history=False) is None
    wrapped = '{"type":"message","stream":"all","offset":1,"epoch":"e","data":"x"}'
    assert control_frame(wrapped, history=False) is None  # without history: the app's JSON
    assert control_frame(wrapped, history=True) is not None


def test_connect_checks_its_urls_before_any_attempt() -> None:
    with pytest.raises(ConfigError):
        connect("http://h/ws/a")
    with pytest.raises(ConfigError):
        connect([])
    with pytest.raises(ConfigError):
        connect("ws://h/ws/{client_id}")
    assert connect("ws://h/ws/{client_id}", client_id="a b/c").state.value == "connecting"


async def test_an_on_presence_callback_without_presence_is_refused_before_anything_is_sent(
) -> None:
    from stabilizer.client import ClientConnection

    conn = ClientConnection("ws://127.0.0.1:9/ws", protocol=2, get_token=lambda: "t")
    with pytest.raises(ValueError, match="on_presence needs presence=True"):
        await conn.subscribe("room", on_presence=lambda joins, leaves: None)


def test_advice_is_followed_once_then_the_backoff_goes_on_under_it() -> None:
    """A server (or a proxy) advising 0 again and again must not make a tight loop: the
    advised attempt that fails too is followed by the longer of advice and backoff."""
    policy = RetryPolicy(base=1.0, cap=30.0)
    advice = '{"retry_ms": 0}'
    assert retry_delay(policy, 1, 1013, advice) == 0.0
    later = [retry_delay(policy, 6, 1013, advice) for _ in range(50)]
    assert max(later) > 1.0  # a backoff of up to 30 s, 50 draws
    steady = [retry_delay(policy, 6, 1012, '{"retry_ms": 5000}') for _ in range(50)]
    assert min(steady) >= 5.0  # advice still bounds it from below


def test_a_shed_that_admitted_messages_resumes_at_once_and_is_no_failure() -> None:
    """The client closing a socket itself because its application fell behind (1013) was
    counted as a failed connection (it lives less than stable_after), and backed off up to
    the cap: delivery slowed to a crawl."""
    policy = RetryPolicy(base=10.0, cap=30.0)
    def shed(failures: int, admitted: int, stable: bool = False) -> tuple[int, float]:
        return plan_retry(policy, failures, code=1013, reason=FELL_BEHIND, shed=True,
                          admitted=admitted, stable=stable)
    assert shed(0, admitted=25) == (0, 0.0)
    assert shed(3, admitted=1) == (3, 0.0)  # an earlier outage's count stays
    assert shed(3, admitted=1, stable=True) == (0, 0.0)


def test_a_shed_that_admitted_nothing_is_a_failure_and_backs_off() -> None:
    policy = RetryPolicy(base=1.0, cap=2.0)
    plans = [plan_retry(policy, 4, code=1013, reason=FELL_BEHIND, shed=True, admitted=0)
             for _ in range(50)]
    assert {failures for failures, _ in plans} == {5}
    assert all(0.0 < delay <= 2.0 for _, delay in plans)
    assert max(delay for _, delay in plans) > 1.0  # the policy's backoff, 50 draws


def test_a_connection_that_ends_early_is_a_failure_and_a_stable_one_resets_the_count() -> None:
    policy = RetryPolicy(base=0.001, cap=0.001)
    failures, delay = plan_retry(policy, 2, code=1006, reason="")
    assert failures == 3
    assert delay <= 0.001
    assert plan_retry(policy, 2, code=1012, reason='{"retry_ms": 700}', stable=True) == (0, 0.7)


def test_a_resubscribe_backs_off_as_reconnects_do_and_gives_up_after_max_attempts() -> None:
    """A channel answered "try later" is asked again after the policy's backoff; never
    given up without max_attempts, given up after that many answers in a row with it."""
    forever, bounded = RetryPolicy(base=0.5, cap=1.0), RetryPolicy(cap=1.0, max_attempts=3)
    delays = [resubscribe_delay(forever, failures) for failures in (1, 5, 1000)]
    assert all(delay is not None and 0.0 <= delay <= 1.0 for delay in delays)
    assert [resubscribe_delay(bounded, failures) is None for failures in (1, 2, 3, 4)] == [
        False, False, True, True]


def test_positions_forget_a_stream_and_stay_home_when_over_what_a_server_takes() -> None:
    positions = Positions()
    positions.accept("all", 3, "e")
    positions.accept("g:room", 7, "e")
    positions.forget("g:room")
    assert positions.to_resume() == {"all": (3, "e")}
    assert positions.accept("g:room", 1, "e")  # a new membership starts afresh
    many = Positions()
    for i in range(1001):
        many.accept(f"g:{i}", 1, "e")
    assert many.to_resume() == {}
    assert many.encode() is None
    assert not many.accept("g:5", 1, "e")  # duplicates are still dropped here
    long = Positions()
    for i in range(300):
        long.accept("g:" + "x" * 250 + str(i), 1, "e")
    assert long.to_resume() == {}


@pytest.mark.parametrize("field", ["heartbeat_interval", "expires_at"])
def test_a_session_frame_number_too_large_for_a_float_is_ignored(field: str) -> None:
    from stabilizer.pure.client_protocol import SessionInfo
    frame = {"type": "session", "client_id": "c", "conn_id": "x", "node_id": "n",
             "resumed": False, field: 10**400}
    info = SessionInfo.from_frame(frame)
    assert getattr(info, field) is None


async def test_a_socket_behind_is_replaced_once_the_application_drained_half_the_inbox(
        ) -> None:
    """It was replaced after one message taken: each resume let in about one more."""
    inbox = Inbox(4)
    for message in "abcd":
        assert inbox.offer(message)
    assert not inbox.offer("e")
    assert inbox.admitted == 4
    caught_up = asyncio.create_task(inbox.fell_behind())
    assert await inbox.get(lambda: False) == ("a", None)
    await asyncio.sleep(0)  # (a turn of the loop: the waiter sees the message taken)
    assert not caught_up.done()  # 3 wait: a resume now would let in one
    assert await inbox.get(lambda: False) == ("b", None)
    await asyncio.wait_for(caught_up, 1)  # 2 wait, half: a resume lets in two at least
    inbox.new_socket()
    assert inbox.admitted == 0
    assert inbox.offer("e")
    assert inbox.offer("f")
    assert not inbox.offer("g")
    assert inbox.admitted == 2
    assert Inbox(1).resume_at == 0
    assert Inbox(5).resume_at == 2


async def test_a_full_inbox_turns_the_rest_of_its_socket_away_and_never_waits() -> None:
    inbox = Inbox(2)
    assert inbox.offer("a")
    assert inbox.offer("b")
    assert not inbox.offer("c")  # full: turned away at once, the reader goes on
    assert inbox.behind
    caught_up = asyncio.create_task(inbox.fell_behind())
    await asyncio.sleep(0)
    assert not caught_up.done()  # no room yet for what a new socket replays
    assert await inbox.get(lambda: False) == ("a", None)
    assert not inbox.offer("d")  # room, but the socket is behind: the kept stay a prefix
    await asyncio.wait_for(caught_up, 1)
    inbox.new_socket()
    assert inbox.offer("e")
    assert [await inbox.get(lambda: False) for _ in range(2)] == [("b", None), ("e", None)]
    assert len(inbox) == 0


def test_an_inbox_needs_room_for_one_message() -> None:
    with pytest.raises(ConfigError):
        Inbox(0)


def history_frame(offset: int | None, data: str, stream: str = "c:me") -> str:
    epoch = None if offset is None else "e"
    return json.dumps({"type": "message", "stream": stream, "offset": offset,
                       "epoch": epoch, "data": data})


async def test_a_message_a_full_inbox_turned_away_moves_no_position() -> None:
    resumes: list[ResumeResult] = []
    inbox = Inbox(1)
    frames = Frames(inbox, client_id=None, token=None, v2=None, send_timeout=1.0,
                    on_control=None, on_resume=resumes.append)
    frames.history = True
    socket = object()
    await frames.handle(socket, history_frame(1, "a"))  # type: ignore[arg-type]
    await frames.handle(socket, history_frame(2, "b"))  # type: ignore[arg-type]
    await frames.handle(socket, history_frame(None, "c", "g:live"))  # type: ignore[arg-type]
    assert inbox.behind
    assert frames.positions.snapshot() == {"c:me": (1, "e")}  # the resume replays from 2
    frames.resumed(ResumeResult(recovered=True))
    # an unsequenced message turned away cannot be replayed: its stream failed
    assert resumes == [ResumeResult(recovered=False, failed=("g:live",))]
    frames.resumed(ResumeResult(recovered=True))
    assert resumes[1].recovered  # (said once)
