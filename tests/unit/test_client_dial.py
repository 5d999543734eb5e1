"""How the Python client reads the end of a socket (client/dial.py, record_close): whose
close it was, and what it means for the next attempt."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from stabilizer.client import ClientClosedError
from stabilizer.client.dial import Attempt, record_close

TOO_BIG = Close(1009, "")


def ended(*, rcvd: Close | None, sent: Close | None,
          rcvd_then_sent: bool | None = None) -> ConnectionClosed:
    return ConnectionClosed(rcvd, sent, rcvd_then_sent)


@pytest.mark.parametrize("echo", [None, TOO_BIG], ids=["not echoed", "echoed"])
def test_the_clients_own_1009_ends_the_client_naming_the_limit(echo: Close | None) -> None:
    attempt = Attempt(url="ws://h/ws", used_token=True)
    exc = ended(rcvd=echo, sent=TOO_BIG, rcvd_then_sent=None if echo is None else False)
    with pytest.raises(ClientClosedError) as closed:
        record_close(attempt, exc, 65536)
    assert closed.value.code == 1009
    assert closed.value.reason == ("a message from the server was over max_message_size "
                                   "(65536 bytes)")


def test_a_servers_1009_is_the_servers() -> None:
    attempt = Attempt(url="ws://h/ws", used_token=True)
    record_close(attempt, ended(rcvd=Close(1009, "frame too big"), sent=TOO_BIG,
                                rcvd_then_sent=True), 65536)
    assert (attempt.code, attempt.reason) == (1009, "frame too big")  # (final: _plan)


def test_a_socket_lost_without_a_close_frame_is_1006() -> None:
    attempt = Attempt(url="ws://h/ws", used_token=True)
    record_close(attempt, ended(rcvd=None, sent=None), 65536)
    assert (attempt.code, attempt.reason) == (1006, "connection lost without a close frame")
