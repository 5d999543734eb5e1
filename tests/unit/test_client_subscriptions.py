"""The Python client's book of subscriptions, plain calls: where a channel's messages go
while the application leaves it (tests/integration/test_client_subscribe_window.py runs
the same against a server), and which channels follow presence (a presence copy, and
presence asked for again after a reconnect: test_client_presence_refused.py)."""

from __future__ import annotations

from stabilizer.client.presence import OnPresenceChange
from stabilizer.client.subscriptions import Subscription, Subscriptions

ENDED = {"type": "unsubscribed", "channel": "room", "reason": "server"}


def held(book: Subscriptions, channel: str, entry: Subscription,
         on_presence: OnPresenceChange | None = None) -> None:
    book.subscribed(channel, book.subscribing(channel), entry, on_presence)


def test_a_channel_being_left_goes_to_its_callback_until_the_last_reply() -> None:
    book, got = Subscriptions(), []
    held(book, "room", Subscription(got.append))
    for _ in range(2):  # (the application unsubscribes twice before either reply)
        book.unsubscribing("room", until_reply=True)
        book.leaves("room")
    assert "room" not in book.active
    assert book.route("room", "sent before the leave")
    book.left("room")
    assert book.route("room", "still before the second leave")
    book.left("room")
    assert not book.route("room", "a membership of the application's")
    assert got == ["sent before the leave", "still before the second leave"]


def test_a_subscription_made_meanwhile_takes_the_channel_over() -> None:
    book, old, new = Subscriptions(), [], []
    held(book, "room", Subscription(old.append))
    book.unsubscribing("room", until_reply=True)
    book.leaves("room")
    held(book, "room", Subscription(new.append))
    assert book.route("room", "m")
    held(book, "room", Subscription())  # (one without a callback: to the inbox)
    assert not book.route("room", "n")
    assert (old, new) == ([], ["m"])


def test_the_server_ending_the_channel_ends_its_routing_too() -> None:
    book, got = Subscriptions(), []
    held(book, "room", Subscription(got.append))
    book.unsubscribing("room", until_reply=True)
    book.leaves("room")
    book.ended(ENDED)  # (no message of the membership follows it)
    assert not book.route("room", "m")
    assert got == []


def test_only_a_presence_subscribe_that_succeeds_follows_presence() -> None:
    book = Subscriptions()
    held(book, "stats", Subscription())
    book.subscribed("stats", book.subscribing("stats"), None)  # refused
    assert not book.active["stats"].presence
    assert "stats" not in book.presences
    assert not book.follows_presence
    held(book, "room", Subscription(presence=True))
    assert book.follows_presence
    assert book.presences["room"].channel == "room"


def test_a_channel_followed_stays_followed_after_a_subscribe_without_presence() -> None:
    book = Subscriptions()
    held(book, "room", Subscription(presence=True))
    copy = book.presences["room"]
    held(book, "room", Subscription(params={"seat": 2}))
    assert book.active["room"].presence  # (the server goes on following it)
    assert book.active["room"].params == {"seat": 2}
    assert book.presences["room"] is copy
    book.forget("room")
    assert not book.presences
