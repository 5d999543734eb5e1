"""An acknowledged send whose client's socket is replaced before it acknowledged
(docs/protocol.md 6.7), on two nodes served by uvicorn in this event loop (memory hub, and
two managers on real Redis, where the replacement on the other node reaches the old one as
the KICK the registration publishes), with v2 clients written by hand.

Found by review: with history, a replacement that began a fresh session (the client came
back without its reconnect token) left the old socket's node unaware that nothing would
carry the message to the client again. It dropped the token the socket awaited without a
word, and the send waited out its whole timeout; without history it failed at once. The
node of the old socket is now told how the replacement began: a fresh one ends what the
socket awaited, a resumed one leaves it to the replay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from stabilizer import AckTimeoutError, CloseCode, WebSocketConnectionManager
from tests.integration import test_acks
from tests.integration.test_acks import Nodes, Tab, next_frame, tabs_of_ann
from tests.integration.test_emitter import until

LONG = 3600.0  # an acknowledgement timeout the tests never wait out
BOUND = 10.0  # seconds: the node says so at once, long before the send's timeout

two_nodes = test_acks.two_nodes  # the fixture: two nodes sharing one store
WHERE = pytest.mark.parametrize("same_node", [True, False], ids=["same-node", "other-node"])


@contextlib.asynccontextmanager
async def awaiting(asker: WebSocketConnectionManager, url: str,
                   ) -> AsyncIterator[tuple[Tab, dict[str, Any], asyncio.Task[bool]]]:
    """A tab served at `url`, an acknowledged send to it from `asker` and the frame it got
    (not acknowledged); the send is cancelled if the test leaves it waiting."""
    tab = await Tab.open(url, "tab")
    await until(tabs_of_ann(asker, 1))
    asking = asyncio.create_task(asker.send_to_client(tab.client_id, "hi", ack=True,
                                                      timeout=LONG))
    try:
        sent = await tab.message()
        assert sent["data"] == "hi"
        yield tab, sent, asking
    finally:
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError, AckTimeoutError):
            await asking


def sent_to(nodes: Nodes) -> contextlib.AbstractAsyncContextManager[
        tuple[Tab, dict[str, Any], asyncio.Task[bool]]]:
    """`awaiting` with the tab on the second node and the send from the first."""
    (origin, _), (_, holding_url) = nodes
    return awaiting(origin, holding_url)


async def replaced(tab: Tab) -> int | None:
    """The close code the old socket got (frames before it skipped)."""
    try:
        while True:
            await next_frame(tab.ws)
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


@WHERE
async def test_a_send_fails_at_once_when_a_fresh_session_replaces_its_socket(
    two_nodes: Nodes, same_node: bool,
) -> None:
    url = two_nodes[1 if same_node else 0][1]
    async with sent_to(two_nodes) as (tab, _, asking):
        fresh = await Tab.open(url, "tab")  # the same client, without its reconnect token
        assert (fresh.client_id, fresh.resumed) == (tab.client_id, False)
        assert await replaced(tab) == CloseCode.REPLACED
        async with asyncio.timeout(BOUND):
            with pytest.raises(AckTimeoutError, match="can no longer acknowledge"):
                await asking
        await fresh.ws.close()


@WHERE
async def test_a_resumed_session_replacing_its_socket_settles_the_send_by_its_ack(
    two_nodes: Nodes, same_node: bool,
) -> None:
    url = two_nodes[1 if same_node else 0][1]
    async with sent_to(two_nodes) as (tab, sent, asking):
        back = await Tab.open(url, "tab", reconnect_token=tab.token,
                              positions={sent["stream"]: [sent["offset"] - 1, sent["epoch"]]})
        assert (back.client_id, back.resumed) == (tab.client_id, True)
        assert await replaced(tab) == CloseCode.REPLACED
        replayed = await back.message()
        assert (replayed["data"], replayed["ack"]) == ("hi", sent["ack"])
        assert not asking.done()  # the replacement did not end the wait
        await back.ack(replayed)
        async with asyncio.timeout(BOUND):
            assert await asking is True
        await back.ws.close()
