"""PresenceBook: what a node gives back of its connections' presence entries, driven by hand
(the store's published changes with their versions, and the node's own writes and reads)."""

from __future__ import annotations

from stabilizer.pure.presence_book import PresenceBook


def test_the_newest_published_change_wins_whatever_order_it_arrives_in() -> None:
    book: PresenceBook[str] = PresenceBook()
    book.heard("conn", "room", 5, "B")
    book.heard("conn", "room", 4, "A")  # older: ignored
    assert book.entries("conn") == {"room": "B"}


def test_a_removal_the_node_did_not_carry_out_keeps_the_entry_until_the_membership_ends(
) -> None:
    book: PresenceBook[str] = PresenceBook()
    book.heard("conn", "room", 5, "B")
    book.heard("conn", "room", 6, None)  # a sweep took the node for dead: given back later
    assert book.entries("conn") == {"room": "B"}
    book.heard("conn", "room", 5, "older")  # still ordered by version
    assert book.entries("conn") == {"room": "B"}
    book.ended("conn", "room")  # the membership ends here
    assert book.entries("conn") == {}


def test_a_write_counts_unless_a_change_was_heard_while_it_was_in_flight() -> None:
    book: PresenceBook[str] = PresenceBook()
    mark = book.begin("conn", "room")
    book.learned("conn", "room", "mine", mark)  # its change never arrived: still known
    assert book.entries("conn") == {"room": "mine"}

    mark = book.begin("conn", "room")
    book.heard("conn", "room", 7, "mine-2")  # the write's own change, or a newer one
    book.heard("conn", "room", 8, "theirs")
    book.learned("conn", "room", "mine-2", mark)  # the reply comes last: not taken
    assert book.entries("conn") == {"room": "theirs"}


def test_an_ended_membership_keeps_its_version_against_late_changes() -> None:
    book: PresenceBook[str] = PresenceBook()
    book.heard("conn", "room", 3, "A")
    book.ended("conn", "room")
    book.heard("conn", "room", 2, "older")  # from before the end
    assert book.entries("conn") == {}
    book.heard("conn", "room", 9, "joined again")
    assert book.entries("conn") == {"room": "joined again"}


def test_entries_are_per_connection_and_forgotten_with_it() -> None:
    book: PresenceBook[str] = PresenceBook()
    book.heard("a", "room", 1, "A")
    book.heard("a", "hall", 1, "A-hall")
    book.heard("b", "room", 2, "B")
    book.ended("ghost", "room")  # nothing known: nothing to end
    assert book.entries("a") == {"room": "A", "hall": "A-hall"}
    book.forget("a")
    assert book.entries("a") == {}
    assert book.entries("b") == {"room": "B"}
    assert book.entries("ghost") == {}
