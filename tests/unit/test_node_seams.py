"""The node's task owner and context, and the Redis key layout (no server needed)."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from stabilizer import WebSocketConfig
from stabilizer.backends.base import Presence
from stabilizer.backends.memory import MemoryBackend
from stabilizer.backends.redis.keys import KeyLayout, entry_of, parse_entry
from stabilizer.errors import BackendUnavailable
from stabilizer.node.context import NodeContext
from stabilizer.node.tasks import TaskOwner
from stabilizer.pure.streams import client_stream, group_stream, user_stream

# ----------------------------------------------------------------------------- TaskOwner


async def test_the_owner_forgets_finished_tasks_and_stops_running_ones() -> None:
    owner = TaskOwner()
    done = owner.spawn(asyncio.sleep(0), name="quick")
    await done
    assert len(owner) == 0
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = owner.spawn(forever(), name="stabilizer-loop-x")
    await started.wait()
    assert await owner.stop(1.0, prefix="stabilizer-loop-") == []
    assert task.cancelled()


async def test_stop_reports_a_task_that_refuses_to_stop() -> None:
    owner = TaskOwner()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows every cancellation

    owner.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    problems = await owner.stop(0.3)
    assert problems == ["stubborn did not stop within 0.3s"]
    release.set()


async def test_stop_reports_a_task_that_failed_while_stopping() -> None:
    owner = TaskOwner()

    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("broken cleanup")

    owner.spawn(fails_on_cancel(), name="broken")
    await asyncio.sleep(0)
    problems = await owner.stop(1.0)
    assert len(problems) == 1
    assert problems[0].startswith("broken: RuntimeError('broken cleanup')")


async def test_wait_lets_tasks_finish_then_cancels_the_late_ones() -> None:
    owner = TaskOwner()
    opened = asyncio.Event()
    opened.set()
    quick = owner.spawn(opened.wait(), name="quick")  # finishes at its first step
    slow = owner.spawn(asyncio.Event().wait(), name="slow")
    await owner.wait([quick, slow], timeout=0.2)
    assert quick.done()
    assert not quick.cancelled()
    await asyncio.wait([slow], timeout=1.0)
    assert slow.cancelled()


# ----------------------------------------------------------------------------- NodeContext


async def test_a_backend_that_does_not_answer_is_unavailable_within_op_timeout() -> None:
    """op_timeout per round trip, and one more for a batch in flight it may wait for."""
    ctx = NodeContext(WebSocketConfig(op_timeout=0.05), MemoryBackend())
    with pytest.raises(BackendUnavailable, match=r"within 0\.15s"):
        await ctx.ask(asyncio.Event().wait(), round_trips=2)


def test_a_resync_request_is_taken_once() -> None:
    ctx = NodeContext(WebSocketConfig(), MemoryBackend())
    assert ctx.take_resync() is False
    ctx.want_resync()
    ctx.want_resync()
    assert ctx.take_resync() is True
    assert ctx.take_resync() is False


# ----------------------------------------------------------------------------- KeyLayout

USER_INPUT = ["alice", "{other}", "}{", "a{b}c", "{", "x" * 256, "é✓", ""]


@pytest.mark.parametrize("buckets", [1, 4])
def test_every_key_of_the_namespace_slot_is_in_that_slot(buckets: int) -> None:
    keys = KeyLayout("chat", buckets)
    slot = key_slot(keys.tag.encode())
    for name in USER_INPUT:
        for key in (keys.group(name), keys.client_groups(name), keys.session(name),
                    keys.stream(name), keys.stream_meta(name), keys.group_channel(name),
                    keys.token(name), keys.nodes, keys.secret, keys.keyring, keys.away,
                    keys.broadcast_channel, keys.events_channel, keys.slot_presence,
                    keys.sequenced_direct_prefix + name):
            assert key_slot(key.encode()) == slot, key


def test_presence_buckets_spread_over_their_own_slots() -> None:
    keys = KeyLayout("chat", 4)
    for name in USER_INPUT:
        bucket = keys.bucket_of(name)
        slot = key_slot(keys.bucket_tag(bucket).encode())
        for key in (keys.presence(bucket), keys.node_set(bucket, "n1"),
                    keys.node_channel(bucket, "n1")):
            assert key_slot(key.encode()) == slot
    assert len({keys.bucket_of(f"client-{i}") for i in range(100)}) == 4


def test_one_bucket_keeps_presence_in_the_namespace_slot() -> None:
    keys = KeyLayout("chat")
    assert keys.presence(0) == keys.slot_presence == "{chat}:p"
    assert keys.node_channel_prefix(0) == keys.sequenced_direct_prefix


def test_spread_keeps_each_group_and_each_client_in_one_slot_of_its_own() -> None:
    keys = KeyLayout("chat", 4, spread=True)
    for name in USER_INPUT:
        group_keys = (keys.group(name), keys.group_presence(name),
                      keys.group_presence_version(name), keys.group_channel(name),
                      keys.stream(group_stream(name)), keys.stream_meta(group_stream(name)))
        assert len({key_slot(key.encode()) for key in group_keys}) == 1, group_keys
        client_keys = (keys.session(name), keys.client_groups(name), keys.leaving(name))
        assert len({key_slot(key.encode()) for key in client_keys}) == 1, client_keys
        assert keys.is_group_channel(keys.group_channel(name))
        # what stays with the namespace: broadcasts, direct and user streams, the away list
        for key in (keys.stream(client_stream(name)), keys.stream(user_stream(name)),
                    keys.stream("all"), keys.away, keys.user(name), keys.events_channel):
            assert key_slot(key.encode()) == key_slot(keys.tag.encode()), key
    names = [keys.group(name) for name in USER_INPUT] + [
        keys.group_presence(name) for name in USER_INPUT] + [
        keys.session(name) for name in USER_INPUT] + [
        keys.client_groups(name) for name in USER_INPUT]
    assert len(set(names)) == len(names)  # no two names share a key
    slots = {key_slot(keys.group(f"room-{i}").encode()) for i in range(300)}
    assert len(slots) > 250  # groups land all over the slot space
    assert not keys.is_group_channel(keys.broadcast_channel)
    assert not keys.is_group_channel(keys.events_channel)


def test_spread_group_keys_are_found_between_their_bounds() -> None:
    for spread in (False, True):
        keys = KeyLayout("chat", spread=spread)
        start, end = keys.group_key_bounds
        for name in USER_INPUT:
            key = keys.group(name)
            assert key.startswith(start)
            assert key.endswith(end)
            assert key[len(start):len(key) - len(end)] == name


def test_a_presence_entry_round_trips_and_garbage_is_none() -> None:
    presence = Presence("a|b", "node-1", "conn-1", 12.5)
    raw = entry_of(presence)
    assert parse_entry("a|b", raw) == presence
    assert parse_entry("a|b", raw.encode()) == presence
    for garbage in ("", "node|conn", "|conn|1", "node||1", "node|conn|soon", "a|b|c|d"):
        assert parse_entry("x", garbage) is None
