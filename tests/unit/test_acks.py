"""Acknowledged sends on one embedded node (docs/protocol.md 6.7): tokens, the frames that
carry them, what a connection remembers, and send_to_client(..., ack=True) against fake
sockets of both protocols."""

from __future__ import annotations

import asyncio
import json

import pytest

from stabilizer import AckTimeoutError, AckUnsupportedError, WebSocketConnectionManager
from stabilizer.connection.ack_tokens import MAX_ACKS, AckTokens, token_bytes
from stabilizer.connection.connection import Connection
from stabilizer.connection.sockets import Frame
from stabilizer.pure.acks import FORGOTTEN, UNSUPPORTED, AckTally, ack_token, parse_ack_token
from stabilizer.pure.frames import app_message_frame, binary_message_frame, message_frame
from stabilizer.pure.v2 import ProtocolError
from stabilizer.pure.wire import Envelope, Kind, decode, encode
from tests.support.fakes import FakeSocket


def test_tokens_name_the_asking_node_and_its_reference() -> None:
    token = ack_token("replica-2", "0123456789abcdef")
    assert token == "0123456789abcdef@replica-2"
    assert parse_ack_token(token) == ("replica-2", "0123456789abcdef")
    for bad in ("", "0123@replica", "0123456789abcdeF@r", "0123456789abcdef@", "x" * 30,
                "0123456789abcdef@bad node", None, 12, ["0123456789abcdef@r"]):
        with pytest.raises(ProtocolError):
            parse_ack_token(bad)


def test_frames_carry_the_token_and_ack_envelopes_round_trip() -> None:
    assert json.loads(app_message_frame("hi", None, "t")) == {"type": "message", "data": "hi",
                                                              "ack": "t"}
    assert json.loads(binary_message_frame(b"\x00", None, "t")) == {
        "type": "message", "data_b64": "AA==", "ack": "t"}
    assert json.loads(message_frame("c:a", 3, "e", "hi", "t"))["ack"] == "t"
    assert "ack" not in json.loads(message_frame("c:a", 3, "e", "hi"))
    frame = Frame.of(b"\x01").asking_ack("t")
    assert json.loads(frame.wrapped().message["text"]) == {
        "type": "message", "data_b64": "AQ==", "ack": "t"}
    assert Frame.of(b"\x01").wrapped().message == {"type": "websocket.send",
                                                   "bytes": b"\x01"}  # no ack: raw binary
    back = decode(encode(Envelope(Kind.ACK, "n1", "ann/tab", None, ref="0123456789abcdef")))
    assert (back.kind, back.origin, back.target, back.ref, back.payload) == (
        Kind.ACK, "n1", "ann/tab", "0123456789abcdef", None)


def test_a_tally_counts_each_client_the_send_reached_once() -> None:
    tally = AckTally()
    tally.answer("ann/1", None)  # before the send knows whom it reached: kept
    assert not tally.settled
    tally.address(["ann/1", "ann/2", "ann/3"])
    tally.answer("ann/away", None)  # replayed a copy on its return: not reached
    tally.answer("ann/1", None)  # replayed again after a resume: once
    tally.answer("ann/2", UNSUPPORTED)
    tally.answer("ann/2", None)  # (the first answer stands)
    assert not tally.settled
    assert (tally.count(None), tally.count(UNSUPPORTED), tally.count(FORGOTTEN)) == (1, 1, 0)
    tally.answer("ann/3", FORGOTTEN)
    assert tally.settled
    assert (tally.count(None), tally.count(UNSUPPORTED), tally.count(FORGOTTEN)) == (1, 1, 1)
    nobody = AckTally()
    nobody.address([])
    assert nobody.settled
    assert nobody.count(None) == 0


async def as_v2(manager: WebSocketConnectionManager,
                client_id: str) -> tuple[FakeSocket, Connection]:
    """Connect `client_id` and make its connection a v2 one (e2e tests use real clients)."""
    sock = FakeSocket(client_id)
    await manager.connect(client_id, sock)
    conn = manager.get_connection(client_id)
    assert conn is not None
    conn.protocol, conn._wraps = 2, True
    return sock, conn


async def test_a_connection_takes_each_token_it_was_sent_once_and_remembers_a_bounded_number(
) -> None:
    async with WebSocketConnectionManager() as manager:
        _, conn = await as_v2(manager, "alice")
        now = asyncio.get_running_loop().time()
        for n in range(1030):
            assert conn.offer(Frame.of(f"m{n}").asking_ack(f"t{n}"), now)
        assert not conn.take_ack("t0")  # the oldest were forgotten (1024 are kept)
        assert conn.take_ack("t1029")
        assert not conn.take_ack("t1029")
        assert not conn.take_ack("never-sent")


async def test_ack_send_waits_for_a_v2_client_and_refuses_a_plain_one() -> None:
    async with WebSocketConnectionManager() as manager:
        plain = FakeSocket("plain")
        await manager.connect("plain", plain)
        with pytest.raises(AckUnsupportedError, match="plain protocol"):
            await manager.send_to_client("plain", "hi", ack=True, timeout=5)
        await plain.expect("hi")  # delivered all the same

        v2, conn = await as_v2(manager, "v2")
        with pytest.raises(AckTimeoutError):
            await manager.send_to_client("v2", {"n": 1}, ack=True, timeout=0.05)
        asking = asyncio.create_task(manager.send_to_client("v2", "ack me", ack=True,
                                                            timeout=10))
        assert (await v2.next_json())["data"] == '{"n":1}'  # the one that timed out
        frame = await v2.next_json()
        assert frame["data"] == "ack me"
        assert manager._node.sessions.acks.acked(conn, frame["ack"])
        assert await asking is True
        assert not manager._node.sessions.acks.acked(conn, frame["ack"])  # once
        assert await manager.send_to_client("nobody", "x", ack=True, timeout=1) is False


async def test_a_send_whose_token_the_connection_forgot_fails_at_once() -> None:
    """Found by the acked-send benchmark: with more than 1,024 acknowledged sends in flight
    to one client, the connection forgot the oldest tokens and their sends waited out their
    whole timeout, though the client acknowledged every message it handled."""
    async with WebSocketConnectionManager() as manager:
        sock, conn = await as_v2(manager, "v2")
        sends = [asyncio.create_task(manager.send_to_client("v2", f"m{n}", ack=True,
                                                            timeout=60))
                 for n in range(1030)]
        frames = [await sock.next_json() for _ in range(1030)]
        async with asyncio.timeout(10):  # not the 60 s timeout: the node says so at once
            early = await asyncio.gather(*sends[:6], return_exceptions=True)
        assert all(isinstance(outcome, AckTimeoutError) for outcome in early)
        assert "too many messages unacknowledged" in str(early[0])
        acks = manager._node.sessions.acks
        assert [acks.acked(conn, frame["ack"]) for frame in frames] == [False] * 6 + [True] * 1024
        async with asyncio.timeout(10):
            assert await asyncio.gather(*sends[6:]) == [True] * 1024


async def test_an_ack_naming_no_client_still_settles_a_send_to_one_client() -> None:
    """An ACK envelope from a node of an older version does not name the client: for a
    send to one client it can only be that client's."""
    async with WebSocketConnectionManager() as manager:
        sock, _ = await as_v2(manager, "v2")
        acks = manager._node.sessions.acks
        asking = asyncio.create_task(manager.send_to_client("v2", "one", ack=True, timeout=10))
        _, ref = parse_ack_token((await sock.next_json())["ack"])
        acks.settle(ref, None, None)
        assert await asking is True


async def test_the_memory_estimate_counts_the_tokens_awaiting_acknowledgement() -> None:
    """Found by review: a connection keeps up to 1,024 tokens, which the memory guard
    (max_memory_per_connection, max_total_memory) did not count."""
    async with WebSocketConnectionManager() as manager:
        sock, conn = await as_v2(manager, "v2")
        idle, total = conn.memory_estimate(), manager.total_memory()
        sends = [asyncio.create_task(manager.send_to_client("v2", "m", ack=True, timeout=60))
                 for _ in range(100)]
        frames = [await sock.next_json() for _ in range(100)]
        assert conn.queued_bytes == 0  # (every frame was written: no queue counted)
        held = conn.memory_estimate() - idle
        token = frames[0]["ack"]
        assert held >= 100 * (len(token) + 50)  # the characters and the objects holding them
        assert manager.total_memory() - total == held
        acks = manager._node.sessions.acks
        for frame in frames[:50]:
            assert acks.acked(conn, frame["ack"])
        assert conn.memory_estimate() - idle == held // 2
        for frame in frames[50:]:
            assert acks.acked(conn, frame["ack"])
        assert conn.memory_estimate() == idle
        assert await asyncio.gather(*sends) == [True] * 100


def test_the_tokens_a_connection_keeps_hold_bounded_memory() -> None:
    tokens = AckTokens()
    for n in range(MAX_ACKS + 6):
        tokens.expect(f"{n:016x}@node-1")
    assert tokens.bytes == (MAX_ACKS + 6) * token_bytes("0" * 16 + "@node-1")  # 6 to report
    assert len(tokens.take_forgotten()) == 6
    assert tokens.bytes == MAX_ACKS * token_bytes("0" * 16 + "@node-1")
    assert tokens.take(f"{MAX_ACKS:016x}@node-1")
    assert not tokens.take(f"{MAX_ACKS:016x}@node-1")
    assert tokens.bytes == (MAX_ACKS - 1) * token_bytes("0" * 16 + "@node-1")
