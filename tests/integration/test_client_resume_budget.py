"""What a resuming Python client names in its connect frame (its positions and the channels
they do not already hold, within MAX_RESUME_TEXT bytes of UTF-8), and the position of a
channel whose automatic leave fails."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import SubscribeRequest, WebSocketConnectionManager
from stabilizer.client import ResumeResult, RetryPolicy, connect
from stabilizer.client.requests import Requests
from stabilizer.connection.connection import Connection
from stabilizer.errors import RPCError
from stabilizer.pure.frames import reply_error_frame
from stabilizer.pure.v2 import ChannelRequest
from stabilizer.services.channels import Channels
from tests.integration.test_client_resubscribe import (
    Gate,
    away,
    history_app,
    kept_history,
    resumed_after_a_restart,
    roomy_resumes,
)
from tests.integration.test_emitter import until
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served


async def test_a_leave_while_away_of_a_channel_without_a_position_is_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Default limits: 120 channels with messages (their g: positions go with the resume)
    and 8 quiet presence channels, named last. Before, every channel was named, the names
    of channels the positions already held used up the budget, and the quiet ones were left
    out: the leave of one while away was never told, and the client joined it again."""
    manager = WebSocketConnectionManager(kept_history())
    asked: list[str] = []
    ended: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    resumed: asyncio.Queue[ResumeResult] = asyncio.Queue()
    busy = [f"room-{n:03d}-" + "x" * 246 for n in range(120)]
    quiet = [f"zz-{n}-" + "x" * 246 for n in range(8)]
    async with served(history_app(manager, asked), "websockets-sansio", monkeypatch) as server:
        gate = Gate(f"ws://127.0.0.1:{server.port}/ws")
        async with connect(gate, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05),
                           on_resume=resumed.put_nowait) as client:
            got: asyncio.Queue[str | bytes] = asyncio.Queue()
            for channel in busy:
                await client.subscribe(channel, on_message=got.put_nowait)
                await manager.send_to_group(channel, "m")
            for channel in quiet:
                await client.subscribe(channel, presence=True, on_message=got.put_nowait,
                                       on_unsubscribed=lambda reason, channel=channel:
                                       ended.put_nowait((channel, reason)))
            for _ in busy:
                await asyncio.wait_for(got.get(), 5)
            assert len(client.positions) == len(busy)
            client_id = client.client_id
            assert client_id is not None
            await away(manager, client_id, gate)
            await manager.leave_group(client_id, quiet[-1])  # the application's, meanwhile
            gate.open = True
            assert (await asyncio.wait_for(resumed.get(), 10)).session_resumed
            assert await asyncio.wait_for(ended.get(), 10) == (quiet[-1], "server")

            async def asked_again() -> bool:  # the other quiet ones follow presence
                return len(asked) == len(busy) + len(quiet) + len(quiet) - 1

            await until(asked_again, timeout=10)
            assert asked.count(quiet[-1]) == 1
            assert await manager.get_group_members(quiet[-1]) == []
            assert ended.empty()


async def test_non_ascii_names_keep_the_resume_within_its_budget_in_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions were measured in characters: 230 group names of 250 CJK characters took
    about 58,000 characters but 173 KB, the frame went over a max_message_size of 80,000,
    and the client took the server's 1009 as final. Now positions over the budget in bytes
    stay home (the server replays from the session's start; the client drops what it had)."""
    async with roomy_resumes(monkeypatch) as (manager, client, resumed):
        channels = [f"{n:03d}" + "中" * 247 for n in range(230)]
        got: asyncio.Queue[str | bytes] = asyncio.Queue()
        for channel in channels:
            await client.subscribe(channel, on_message=got.put_nowait)
            await manager.send_to_group(channel, "m")
        for _ in channels:
            await asyncio.wait_for(got.get(), 5)
        client_id = await resumed_after_a_restart(manager, client, resumed)
        await manager.send_to_client(client_id, "marker")
        assert await asyncio.wait_for(client.recv(), 5) == "marker"
        assert got.empty()  # the replayed messages were dropped as duplicates
        assert len(await manager.get_client_groups(client_id)) == len(channels)


async def test_a_failed_automatic_leave_keeps_the_position_of_the_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept resume, the hook now refusing the presence re-subscribe, and the client's
    leave failing (unavailable): the subscription stays. Before, its position was already
    forgotten, so the next resume replayed the channel from the session's start again."""
    manager = WebSocketConnectionManager(kept_history())
    revoked: set[str] = set()
    failing = [True]
    unsubscribe, leave = Channels.unsubscribe, Requests._leave
    left_failed = asyncio.Event()

    async def refused(self: Channels, conn: Connection, request: ChannelRequest) -> str:
        if failing.pop() if failing else False:
            return reply_error_frame(request.call_id, "unavailable", "backend down")
        return await unsubscribe(self, conn, request)

    async def leaving(self: Requests, channel: str, timeout: float) -> None:
        try:
            await leave(self, channel, timeout)
        except RPCError:
            left_failed.set()
            raise

    async def hook(request: SubscribeRequest) -> dict[str, str] | bool:
        return False if request.channel in revoked else {"name": request.client_id}

    monkeypatch.setattr(Channels, "unsubscribe", refused)
    monkeypatch.setattr(Requests, "_leave", leaving)
    app = session_app(manager)
    manager.on_subscribe(hook)
    got: asyncio.Queue[str | bytes] = asyncio.Queue()
    resumed: asyncio.Queue[ResumeResult] = asyncio.Queue()
    async with served(app, "websockets-sansio", monkeypatch) as server:
        gate = Gate(f"ws://127.0.0.1:{server.port}/ws")
        async with connect(gate, protocol=2, retry=RetryPolicy(base=0.01, cap=0.05),
                           on_resume=resumed.put_nowait) as client:
            await client.subscribe("room", presence=True, on_message=got.put_nowait)
            for n in range(3):
                await manager.send_to_group("room", f"m{n}")
            assert [await asyncio.wait_for(got.get(), 5) for _ in range(3)] == [
                "m0", "m1", "m2"]
            position = client.positions["g:room"]
            client_id = client.client_id
            assert client_id is not None
            await away(manager, client_id, gate)
            revoked.add("room")  # refused now, and the leave fails
            gate.open = True
            await asyncio.wait_for(resumed.get(), 10)
            await asyncio.wait_for(left_failed.wait(), 10)
            assert await manager.get_group_members("room") == [client_id]
            assert client.positions.get("g:room") == position
            revoked.clear()
            await away(manager, client_id, gate)
            gate.open = True
            result = await asyncio.wait_for(resumed.get(), 10)
            assert (result.session_resumed, result.replayed) == (True, 0)
            await manager.send_to_client(client_id, "marker")
            assert await asyncio.wait_for(client.recv(), 5) == "marker"
            assert got.empty()
