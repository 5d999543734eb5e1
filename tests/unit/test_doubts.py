"""Doubts: a lost subscription is in doubt until a settle that began after it is done; a
client whose change failed, until a node-wide settle takes it (and back if that fails)."""

from __future__ import annotations

from stabilizer.services.delivery.doubts import Doubts


def test_a_lost_subscription_is_in_doubt_until_a_settle_that_covers_it() -> None:
    doubts = Doubts()
    assert not doubts.node_wide
    doubts.subscription_lost()
    losses, _ = doubts.begin_settle()
    doubts.subscription_lost()  # lost again while the settle ran
    doubts.settled(losses)
    assert doubts.node_wide  # the second loss is not covered
    losses, _ = doubts.begin_settle()
    doubts.settled(losses)
    assert not doubts.node_wide
    doubts.settled(0)  # an older settle ending late changes nothing
    assert not doubts.node_wide


def test_a_doubted_client_stays_in_doubt_when_its_settle_fails() -> None:
    doubts = Doubts()
    doubts.change_failed("ann")
    assert "ann" in doubts
    _, taken = doubts.begin_settle()
    assert taken == {"ann"}
    assert "ann" not in doubts
    doubts.give_back(taken)
    assert "ann" in doubts
    _, taken = doubts.begin_settle()
    assert taken == {"ann"}
    assert "ann" not in doubts
