"""The Python client's book of subscriptions when the server ends one (an ``unsubscribed``
frame), plain calls: the channel is dropped, its callback told once, and a subscribe in
flight when the frame came is undone (the server leaves only a channel it was in)."""

from __future__ import annotations

from stabilizer.client.requests import Subscription, Subscriptions

ENDED = {"type": "unsubscribed", "channel": "room", "reason": "server"}


def test_an_active_channel_is_dropped_and_its_callback_told() -> None:
    book, told = Subscriptions(), []
    number = book.subscribing("room")
    book.subscribed("room", number, Subscription(on_unsubscribed=told.append))
    book.ended(ENDED)
    assert "room" not in book.active
    assert told == ["server"]
    book.ended(ENDED)  # (again, or for a channel it never had: nothing)
    book.ended({"type": "unsubscribed", "channel": "lobby"})
    assert told == ["server"]


def test_a_subscribe_answered_after_the_frame_is_undone_and_told() -> None:
    book, told = Subscriptions(), []
    number = book.subscribing("room")
    book.ended(ENDED)  # the reply was read, its subscribe has not resumed yet
    book.subscribed("room", number, Subscription(on_unsubscribed=told.append))
    assert "room" not in book.active
    assert told == ["server"]


def test_a_subscribe_sent_after_the_frame_counts() -> None:
    book, told = Subscriptions(), []
    first = book.subscribing("room")
    book.ended(ENDED)
    second = book.subscribing("room")
    book.subscribed("room", first, Subscription(on_unsubscribed=told.append))
    book.subscribed("room", second, Subscription(on_unsubscribed=told.append))
    assert "room" in book.active
    assert told == ["server"]  # (the first was undone)
