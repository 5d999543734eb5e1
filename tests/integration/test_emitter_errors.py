"""What the emitter's exceptions tell a caller: a presence query on a namespace without
presence is refused as the replicas refuse it."""

from __future__ import annotations

import asyncio

import pytest

from stabilizer import (
    ChannelOptions,
    Emitter,
    PresenceDisabledError,
    SyncEmitter,
    WebSocketConfig,
)
from tests.conftest import ManagerFactory
from tests.integration.test_emitter import QUIET

pytestmark = pytest.mark.redis


async def test_presence_queries_refuse_a_namespace_without_presence(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    config = WebSocketConfig(redis_url=redis_url, namespace=namespace, channel_namespaces={
        "quiet:": ChannelOptions(presence=False)})
    node = make_manager(config.replace(**QUIET))
    await node.start()
    async with Emitter(config=config) as emitter:
        for ask in (node.get_presence, node.count_presence,
                    emitter.get_presence, emitter.count_presence):
            with pytest.raises(PresenceDisabledError, match="quiet:x"):
                await ask("quiet:x")
        assert await emitter.get_presence("room") == {}  # other namespaces answer
        assert await emitter.count_presence("room") == 0

    def blocking() -> None:
        with SyncEmitter(config=config) as sync, pytest.raises(PresenceDisabledError):
            sync.count_presence("quiet:x")

    await asyncio.to_thread(blocking)
