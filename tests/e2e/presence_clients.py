"""Cheap raw protocol v2 clients of tests/e2e/v2_app.py for the presence tests: tokens are
signed here with the app's secret (no admin round trip), and a follower records every frame
it receives, keeping its own copy of each channel's presence from them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from stabilizer.auth import JWTAuthenticator
from stabilizer.pure.presence import PresenceMap, PresenceSync
from tests.e2e.conftest import V2_SECRET
from tests.support.uvicorn_proc import UvicornProcess

_SIGNER = JWTAuthenticator(secret=V2_SECRET)
_IDS = itertools.count(1)
V2: Subprotocol = Subprotocol("stabilizer.v2")


async def open_v2(server: UvicornProcess, user_id: str, device: str | None = None,
                  timeout: float = 30.0) -> tuple[ClientConnection, str]:
    """A v2 connection of `user_id` past its `session` frame: (socket, client id)."""
    ws = await connect(f"{server.ws}/ws", subprotocols=[V2], open_timeout=timeout,
                       max_queue=None)
    try:
        hello: dict[str, Any] = {"type": "connect", "token": _SIGNER.issue(user_id, ttl=3600)}
        if device is not None:
            hello["device"] = device
        await ws.send(json.dumps(hello))
        async with asyncio.timeout(timeout):
            session = json.loads(await ws.recv())
        assert session["type"] == "session", session
        return ws, str(session["client_id"])
    except BaseException:
        await ws.close()
        raise


@dataclass
class Follower:
    """A v2 connection that follows channels' presence: every frame it got, in order, and
    its copy of each channel's presence built from them."""

    ws: ClientConnection
    client_id: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    copies: dict[str, PresenceSync] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, server: UvicornProcess, user_id: str,
                   device: str | None = None) -> Follower:
        """Connect as `user_id` (on `device`) and read in the background until aclose()."""
        ws, client_id = await open_v2(server, user_id, device)
        watcher = cls(ws, client_id)
        watcher.reader = asyncio.create_task(watcher.read(), name=f"follower-{client_id}")
        return watcher

    async def aclose(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    def presence(self, channel: str) -> PresenceMap:
        """This follower's copy of `channel`'s presence."""
        copy = self.copies.get(channel)
        return {} if copy is None else copy.list()

    def diffs(self, channel: str, since: int = 0) -> list[dict[str, Any]]:
        """The presence_diff frames of `channel` from frame number `since` on."""
        return [frame for frame in self.frames[since:]
                if frame.get("type") == "presence_diff" and frame.get("channel") == channel]

    async def until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait until `predicate()` holds (checked after each frame)."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def subscribe(self, channel: str, presence: bool = False,
                        timeout: float = 60.0) -> None:
        """Join `channel`; return once the reply came (and with `presence`, the state)."""
        request_id = next(_IDS)
        await self.ws.send(json.dumps({"type": "subscribe", "id": request_id,
                                       "channel": channel, "presence": presence}))

        def answered() -> bool:
            reply = next((frame for frame in self.frames if frame.get("type") == "reply"
                          and frame.get("id") == request_id), None)
            if reply is not None:
                assert "result" in reply, reply
            return reply is not None and (not presence or any(
                frame.get("type") == "presence_state" and frame.get("channel") == channel
                for frame in self.frames))

        await self.until(answered, timeout)

    async def follow(self, channel: str, timeout: float = 60.0) -> None:
        """Subscribe with presence; return once the channel's presence_state arrived."""
        await self.subscribe(channel, presence=True, timeout=timeout)

    async def read(self) -> None:
        """Take frames until the socket closes."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                channel = frame.get("channel")
                if frame.get("type") == "presence_state":
                    self.copies.setdefault(channel, PresenceSync()).sync_state(
                        frame["presence"])
                elif frame.get("type") == "presence_diff":
                    self.copies.setdefault(channel, PresenceSync()).sync_diff(frame)
                async with self.changed:
                    self.changed.notify_all()


@contextlib.asynccontextmanager
async def follower(server: UvicornProcess, user_id: str) -> AsyncIterator[Follower]:
    """A Follower of `user_id` on `server`, reading in the background while in use."""
    watcher = await Follower.open(server, user_id)
    try:
        yield watcher
    finally:
        await watcher.aclose()


def changes_by_client(frames: list[dict[str, Any]], channel: str) -> dict[str, list[str]]:
    """Per client id, the "join"/"leave" of it in `channel`'s presence frames, in order (a
    presence_state counts as the join of everyone it lists)."""
    out: dict[str, list[str]] = {}
    for frame in frames:
        if frame.get("channel") != channel:
            continue
        if frame.get("type") == "presence_state":
            for items in frame["presence"].values():
                for item in items:
                    out.setdefault(item["client_id"], []).append("join")
        elif frame.get("type") == "presence_diff":
            for kind, name in (("leaves", "leave"), ("joins", "join")):  # leaves apply first
                for items in frame[kind].values():
                    for item in items:
                        out.setdefault(item["client_id"], []).append(name)
    return out
