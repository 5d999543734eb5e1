"""SharedKeyring: the token keys a node holds while the backend shares them (pure)."""

from __future__ import annotations

from stabilizer.pure.keyring import SharedKeyring, SharedKeys, new_shared_key
from stabilizer.pure.tokens import TokenCodec, key_id_of

KEEP = 100.0


def test_a_node_without_a_key_offers_a_fresh_one_and_holds_nothing() -> None:
    ring = SharedKeyring(KEEP)
    offer, held = ring.offer(now=0.0)
    assert len(offer) == 64
    assert held == {}
    assert ring.keys() == []


def test_a_node_offers_its_own_key_and_holds_it_for_a_token_lifetime() -> None:
    mine = new_shared_key()
    ring = SharedKeyring(KEEP, mine)
    offer, held = ring.offer(now=10.0)
    assert offer == mine
    assert held == {mine: 10.0 + KEEP}


def test_the_stores_key_signs_and_the_old_one_verifies_until_its_tokens_expire() -> None:
    mine, stores = new_shared_key(), new_shared_key()
    ring = SharedKeyring(KEEP, mine)
    old_token = TokenCodec(ring.keys(), "ns").sign("alice", now=5.0, ttl=KEEP)

    assert ring.adopt(SharedKeys(stores, {}), now=5.0) is True
    assert ring.signing == stores
    codec = TokenCodec(ring.keys(), "ns")
    assert codec.verify(old_token, now=6.0).client_id == "alice"
    assert codec.verify(codec.sign("bob", now=6.0, ttl=KEEP), now=6.0).client_id == "bob"
    assert ring.offer(now=6.0)[1][mine] == 5.0 + KEEP  # given to the store with its end

    ring.adopt(SharedKeys(stores, {}), now=5.0 + KEEP + 1)
    kid = key_id_of(old_token)
    assert kid is not None
    assert not TokenCodec(ring.keys(), "ns").knows(kid)


def test_the_store_keeps_the_latest_end_of_a_key() -> None:
    mine, other, stores = new_shared_key(), new_shared_key(), new_shared_key()
    ring = SharedKeyring(KEEP, mine)
    assert ring.adopt(SharedKeys(mine, {other: 50.0}), now=0.0) is False
    ring.adopt(SharedKeys(stores, {other: 40.0, mine: 1.0}), now=0.0)
    held = ring.offer(now=0.0)[1]
    assert held[other] == 50.0
    assert held[mine] == KEEP
    assert ring.adopt(SharedKeys(stores, {}), now=60.0) is False
    assert other not in ring.offer(now=60.0)[1]


def test_key_id_of_reads_only_a_tokens_shape() -> None:
    token = TokenCodec([b"k" * 32], "ns").sign("alice", now=0.0, ttl=1.0)
    assert key_id_of(token) == token.split(".")[1]
    for shape in ("", "s1.a.b", "s2.a.b.c", None, 3, "s1." + "x" * 3000 + ".b.c"):
        assert key_id_of(shape) is None
