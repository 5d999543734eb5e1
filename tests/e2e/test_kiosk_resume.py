"""A client id the application names (``/kiosk/{client_id}``: a shared device) with users
who sign in, end to end: two uvicorn replicas of tests/e2e/users_app.py on one real Redis,
with history. Alice uses the kiosk, joins her private group, gets a message and drops; one
more is sent. Bob signs in on the kiosk, which still holds her reconnect token. Before, his
connect resumed her session (`recovered: true`): he was replayed her group's messages and
kept receiving them as a member. Now it begins afresh (`fresh: true`), as after an expired
session, and her membership ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.test_identity import (
    Servers,
    close_every_socket,
    dial,
    frame,
    servers,
    token,
)

__all__ = ["close_every_socket", "servers"]  # the fixtures, re-exported for pytest

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HISTORY = {"history_size": 100, "history_ttl": 60, "session_ttl": 60}


def signed_in(user: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token(user)}"}}


async def test_another_user_on_a_shared_client_id_gets_no_resume(servers: Servers) -> None:
    first, second = servers(2, **HISTORY)
    alice = await dial(f"{first.ws}/kiosk/kiosk-7", **signed_in("alice"))
    welcome = await frame(alice)
    assert (welcome["client_id"], welcome["resumed"]) == ("kiosk-7", False)
    await asyncio.to_thread(first.post, "/admin/join/private/kiosk-7")
    await asyncio.to_thread(second.post, "/admin/send_to_group/private",
                            {"message": "secret-0"})
    assert (await frame(alice))["data"] == "secret-0"
    alice.transport.abort()  # her tab dies; the device keeps its token
    async with asyncio.timeout(10):  # (a bounded poll: no event says the server saw it)
        while (await asyncio.to_thread(first.get, "/admin/users/alice"))[1]:
            await asyncio.sleep(0.05)
    await asyncio.to_thread(second.post, "/admin/send_to_group/private",
                            {"message": "secret-1"})
    bob = await dial(f"{second.ws}/kiosk/kiosk-7?token={welcome['token']}", **signed_in("bob"))
    session = await frame(bob)
    assert (session["client_id"], session["resumed"]) == ("kiosk-7", True)
    resume = await frame(bob)  # nothing of hers comes before it
    assert resume == {"type": "resume", "recovered": False, "replayed": 0, "failed": ["*"],
                      "fresh": True}
    assert (await asyncio.to_thread(second.get, "/admin/members/private"))[1] == []
    await bob.close()
