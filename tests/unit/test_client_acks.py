"""The acknowledgements a v2 client owes, by hand (pure/client_acks.py): the socket each goes
on, and where a resume starts so that a closed socket's token comes again on the next.

Before, an acknowledgement was bound for good to the socket its message came on, and a
resume started after the last message received: a message the application had not handled
when its socket closed was never acknowledged (tests/integration/test_client_acks.py)."""

from __future__ import annotations

from stabilizer.pure.client_acks import OwedAcks

OLD, NEW, NEWER = "socket-1", "socket-2", "socket-3"


def test_a_resume_starts_each_stream_before_its_oldest_message_still_owed() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("t5", OLD, ("all", 5, "e"))
    owed.owe("t7", OLD, ("all", 7, "e"))
    owed.owe("tg", OLD, ("g:room", 3, "e"))
    owed.owe("tu", OLD, None)  # unsequenced: no resume brings it again
    received = {"all": (9, "e"), "g:room": (3, "e"), "c:me": (4, "e")}
    assert owed.resume_from(received) == {"all": (4, "e"), "g:room": (2, "e"),
                                          "c:me": (4, "e")}
    assert received["all"] == (9, "e")  # (the positions received are not touched)


def test_a_message_of_another_epoch_or_at_offset_0_moves_no_position_back() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("old-epoch", OLD, ("all", 2, "e0"))
    owed.owe("first", OLD, ("g:room", 0, "e"))
    owed.owe("unknown", OLD, ("c:me", 1, "e"))
    assert owed.resume_from({"all": (9, "e1"), "g:room": (4, "e")}) == {"all": (9, "e1")}
    assert owed.resume_from({}) == {}  # (none sent: replayed from the session's start)


def test_a_replayed_copy_moves_the_acknowledgement_to_its_socket() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("t", OLD, ("all", 5, "e"))
    assert owed.again("t", NEW)  # not handled yet: it waits, now for NEW
    assert owed.due("t") == NEW
    assert owed.sent("t", NEW, written=True)
    assert owed.due("t") is None
    assert len(owed) == 0
    assert owed.resume_from({"all": (5, "e")}) == {"all": (5, "e")}


def test_a_message_handled_while_its_socket_is_gone_is_acknowledged_by_its_copy() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("t", OLD, ("all", 5, "e"))
    assert owed.due("t") == OLD
    assert owed.sent("t", OLD, written=False)  # the socket was gone
    assert owed.due("t") is None  # nothing to send until a copy comes
    assert owed.resume_from({"all": (5, "e")}) == {"all": (4, "e")}  # one will
    assert not owed.again("t", NEW)  # the copy: acknowledge it at once
    assert len(owed) == 0


def test_a_copy_arriving_while_the_acknowledgement_is_written_sends_it_again() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("t", OLD, ("all", 5, "e"))
    assert owed.due("t") == OLD
    assert owed.again("t", NEW)  # (the reader, while the application's write waits)
    assert not owed.sent("t", OLD, written=False)  # again, on:
    assert owed.due("t") == NEW
    assert owed.sent("t", NEW, written=True)
    assert len(owed) == 0


def test_a_duplicate_of_a_message_acknowledged_already_is_acknowledged_again() -> None:
    owed: OwedAcks[str] = OwedAcks()
    assert not owed.again("t", NEW)
    assert len(owed) == 0


def test_without_a_place_a_lost_acknowledgement_is_forgotten() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("t", OLD, None)  # without history: no resume brings it again
    assert owed.sent("t", OLD, written=False)
    assert len(owed) == 0


def test_after_a_replay_the_tokens_it_did_not_bring_are_bound_to_a_closed_socket() -> None:
    owed: OwedAcks[str] = OwedAcks()
    owed.owe("waiting", OLD, ("all", 5, "e"))
    owed.owe("handled", OLD, ("all", 6, "e"))
    owed.owe("brought", OLD, ("all", 7, "e"))
    assert owed.sent("handled", OLD, written=False)
    assert owed.again("brought", NEW)
    owed.replayed(NEW)  # (its stream was trimmed, say)
    assert len(owed) == 2  # the handled one will never be sent: forgotten
    assert owed.resume_from({"all": (9, "e")}) == {"all": (6, "e")}  # only "brought"
    assert owed.due("waiting") == OLD  # tried when handled, then forgotten
    assert owed.sent("waiting", OLD, written=False)
    assert owed.again("brought", NEWER)
    owed.replayed(NEWER)
    assert owed.due("brought") == NEWER
    assert len(owed) == 1
