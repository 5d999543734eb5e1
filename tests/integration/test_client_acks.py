"""The Python client acknowledges every message the application handled, on a socket whose
node takes it (docs/protocol.md 6.7), whatever happens meanwhile: one node with history
served by uvicorn in this event loop.

A message that waited in the client when its socket dropped (in the inbox, or taken and
still being handled) was acknowledged on the socket it came on, which was dead: and the
resume, starting after the last message received, did not bring it again (recovered,
nothing replayed). The application handled it, yet the sender's `send_to_client(ack=True)`
raised AckTimeoutError. And two tasks calling recv() concurrently lost an acknowledgement:
the client kept one, of the message recv() returned last."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.client import (
    ClientConnection,
    ConnectionState,
    ResumeResult,
    RetryPolicy,
    StateChange,
    connect,
)
from tests.support.apps import session_app
from tests.support.inproc_uvicorn import served

BOUND = 5.0  # seconds: a bound on waits that end at once when all is well
QUIET = {"heartbeat_interval": 60, "heartbeat_timeout": 120}
HISTORY = {"history_size": 50, "history_ttl": 60.0, "session_ttl": 60.0}
RESTART = '{"retry_ms": 10}'


class Watch:
    """The client's state changes and resume results, as they come."""

    def __init__(self) -> None:
        self.states: list[ConnectionState] = []
        self.resumes: list[ResumeResult] = []
        self._changed = asyncio.Event()

    def on_state(self, change: StateChange) -> None:
        self.states.append(change.state)
        self._changed.set()

    def on_resume(self, result: ResumeResult) -> None:
        self.resumes.append(result)
        self._changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    async def resumed(self) -> ResumeResult:
        """Wait for the resume of the next reconnect (or the one under way)."""
        count = len(self.resumes)
        await self.until(lambda: len(self.resumes) > count)
        return self.resumes[-1]


@asynccontextmanager
async def client_of(manager: WebSocketConnectionManager, monkeypatch: pytest.MonkeyPatch,
                    watch: Watch) -> AsyncIterator[ClientConnection]:
    async with (
        served(session_app(manager), "websockets-sansio", monkeypatch) as server,
        connect(f"ws://127.0.0.1:{server.port}/ws", protocol=2, on_state=watch.on_state,
                on_resume=watch.on_resume, retry=RetryPolicy(base=0.01, cap=0.05)) as client,
    ):
        yield client


async def until_held(client: ClientConnection) -> None:
    """Wait until a message came into the client's inbox."""
    async with asyncio.timeout(BOUND):
        await client._inbox._added.wait()


async def test_a_message_waiting_in_the_inbox_across_a_resume_is_acknowledged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **HISTORY))
    watch = Watch()
    async with client_of(manager, monkeypatch, watch) as client:
        client_id = client.client_id
        assert client_id is not None
        send = asyncio.create_task(
            manager.send_to_client(client_id, "shipped", ack=True, timeout=BOUND))
        await until_held(client)  # received, not taken yet
        resumed = asyncio.create_task(watch.resumed())
        await manager.disconnect(client_id, code=1012, reason=RESTART)
        assert (await resumed).recovered
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "shipped"
            assert await manager.send_to_client(client_id, "next")
            assert await client.recv() == "next"  # (the replayed copy is not delivered)
            assert await send is True  # acknowledged when asked for the next; not
            # AckTimeoutError


@pytest.mark.parametrize("handled", ["before the resume", "after the resume"])
async def test_a_message_being_handled_when_its_socket_drops_is_acknowledged(
        monkeypatch: pytest.MonkeyPatch, handled: str) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET, **HISTORY))
    watch = Watch()
    async with client_of(manager, monkeypatch, watch) as client:
        client_id = client.client_id
        assert client_id is not None
        send = asyncio.create_task(
            manager.send_to_client(client_id, "shipped", ack=True, timeout=BOUND))
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "shipped"  # the application handles it...
        resumed = asyncio.create_task(watch.resumed())
        await manager.disconnect(client_id, code=1012, reason=RESTART)  # ...meanwhile
        if handled == "after the resume":
            await resumed
        else:  # the client saw its socket end
            await watch.until(lambda: ConnectionState.RECONNECTING in watch.states)

        async def later() -> None:
            assert (await resumed).recovered
            assert await manager.send_to_client(client_id, "next")

        sending = asyncio.create_task(later())
        async with asyncio.timeout(BOUND):
            assert await client.recv() == "next"  # handled: it asked for the next
            assert await send is True
            await sending


async def test_messages_taken_by_concurrent_consumers_are_each_acknowledged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tasks calling recv() each acknowledge their own message when they ask for the
    next one: not the other's (it may still be handling it), and none is lost. Before, the
    client kept one acknowledgement, of the message recv() returned last: the second
    consumer's recv acknowledged the first one's message at once, and the first one's own
    acknowledgement was lost."""
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    async with client_of(manager, monkeypatch, Watch()) as client:
        client_id = client.client_id
        assert client_id is not None
        sends = {text: asyncio.create_task(manager.send_to_client(client_id, text, ack=True,
                                                                  timeout=BOUND))
                 for text in ("a", "b")}
        taken: asyncio.Queue[str | bytes] = asyncio.Queue()
        release = asyncio.Event()

        async def consumer(hold: bool) -> None:
            await taken.put(await client.recv())
            if hold:
                await release.wait()  # still handling it
            await client.recv()  # handled: asks for the next (then waits: none comes)

        slow = asyncio.create_task(consumer(hold=True))
        async with asyncio.timeout(BOUND):
            held = await taken.get()
            fast = asyncio.create_task(consumer(hold=False))
            handled = await taken.get()
            assert await sends[str(handled)] is True
            assert not sends[str(held)].done()  # not acknowledged for the slow consumer
            release.set()
            assert await sends[str(held)] is True
        for task in (slow, fast):
            task.cancel()
        await asyncio.wait([slow, fast])


async def test_closing_acknowledges_what_every_consumer_took(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    async with client_of(manager, monkeypatch, Watch()) as client:
        client_id = client.client_id
        assert client_id is not None
        sends = [asyncio.create_task(manager.send_to_client(client_id, text, ack=True,
                                                            timeout=BOUND))
                 for text in ("a", "b")]
        async with asyncio.timeout(BOUND):
            got = await asyncio.gather(client.recv(), client.recv())  # two tasks take one each
        assert sorted(got) == ["a", "b"]
        await client.aclose()  # acknowledges what recv() returned
        async with asyncio.timeout(BOUND):
            assert await asyncio.gather(*sends) == [True, True]


async def test_a_consumer_that_ended_handled_its_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WebSocketConnectionManager(WebSocketConfig(**QUIET))
    async with client_of(manager, monkeypatch, Watch()) as client:
        client_id = client.client_id
        assert client_id is not None
        send = asyncio.create_task(manager.send_to_client(client_id, "a", ack=True,
                                                          timeout=BOUND))
        async with asyncio.timeout(BOUND):
            assert await asyncio.create_task(client.recv()) == "a"  # (its task ended)
            assert await manager.send_to_client(client_id, "b")
            assert await client.recv() == "b"  # another task asks: "a" was handled
            assert await send is True
