"""Channel options per namespace on real uvicorn replicas (tests/e2e/v2_app.py) sharing a
real Redis, with the Python v2 client: a channel without history delivers to its
subscription's callback with no position recorded, and a channel without presence refuses
a subscribe that follows it."""

from __future__ import annotations

import json

import pytest

from stabilizer import RPCError
from tests.e2e.conftest import V2Replicas
from tests.e2e.test_channels import Inbox
from tests.e2e.v2_clients import user

pytestmark = pytest.mark.e2e

NAMESPACES = json.dumps({"public:live:": {"history": False},
                         "presence:quiet:": {"presence": False}})


@pytest.mark.redis
async def test_history_and_presence_off_by_namespace_with_the_python_client(
    v2_replicas: V2Replicas,
) -> None:
    left, right = v2_replicas(2, history_size=100, channel_namespaces=NAMESPACES)
    async with user(left, "alice") as alice, user(right, "bob") as bob:
        live, kept = Inbox(), Inbox()
        await alice.subscribe("public:live:cursor", live)
        await alice.subscribe("public:room", kept)
        await bob.subscribe("public:live:cursor")
        await bob.publish("public:live:cursor", "moved")
        await bob.publish("public:room", "said")
        assert await live.next() == '{"from":"bob","text":"moved"}'
        assert await kept.next() == '{"from":"bob","text":"said"}'
        assert "g:public:room" in alice.positions
        assert "g:public:live:cursor" not in alice.positions  # nothing to resume from

        with pytest.raises(RPCError) as refused:
            await alice.subscribe("presence:quiet:1", presence=True)
        assert refused.value.code == "bad_request"
        with pytest.raises(RPCError) as refused:  # the hook gives metadata: a server bug
            await alice.subscribe("presence:quiet:2")
        assert refused.value.code == "internal"
        await alice.subscribe("presence:lobby", presence=True)  # elsewhere: as before
