"""Two namespaces never share a key: the hash tags a namespace's keys and channels are
named under (its own, its presence buckets', and in the spread layout each group's and
each client's) are disjoint from every other valid namespace's.

A namespace may contain ':', and its buckets' and spread keys' tags add ':' parts to it:
"app:0" named the same keys as bucket 0 of "app", and "app:g:x" the same as group "x:…"
of "app" spread, so one application read and wrote another's presence and groups."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stabilizer.backends.redis.keys import KeyLayout
from stabilizer.config import WebSocketConfig
from stabilizer.errors import ConfigError

_PART = st.one_of(st.sampled_from(["g", "c", "0", "7", "12", "app", "x"]),
                  st.text("abcg0123._-", min_size=1, max_size=4))
NAMESPACES = st.lists(_PART, min_size=1, max_size=4).map(":".join).filter(
    lambda name: len(name) <= 64)
NAMES = st.text("abgc01:", min_size=1, max_size=6)


def valid(namespace: str) -> bool:
    try:
        WebSocketConfig(namespace=namespace)
    except ConfigError:
        return False
    return True


def tags(namespace: str, names: list[str]) -> set[str]:
    """Every hash tag `namespace` names keys under, for these group and client names."""
    found: set[str] = set()
    for buckets in (1, 2, 16):
        for spread in (False, True):
            layout = KeyLayout(namespace, buckets, spread)
            found.add(layout.tag)
            found.update(layout.bucket_tag(bucket) for bucket in range(buckets))
            found.update(layout.group_tag(name) for name in names)
            found.update(layout.client_tag(name) for name in names)
    return found


@given(NAMESPACES, NAMESPACES, st.lists(NAMES, max_size=4))
def test_two_valid_namespaces_share_no_hash_tag(a: str, b: str, names: list[str]) -> None:
    if a == b or not (valid(a) and valid(b)):
        return
    assert not tags(a, names) & tags(b, names)


@pytest.mark.parametrize(("a", "b", "name"), [("app", "app:0", ""), ("app", "app:g:x", "x"),
                                               ("app", "app:c:x", "x"), ("a", "a:g", "5")])
def test_the_namespaces_that_shared_keys_are_refused(a: str, b: str, name: str) -> None:
    assert tags(a, [name]) & tags(b, [name])  # they did share keys
    assert valid(a)
    with pytest.raises(ConfigError, match="namespace"):
        WebSocketConfig(namespace=b)


@pytest.mark.parametrize("namespace", ["app:prod", "app:prod.v1_a-b", "0", "g", "c", "g.1",
                                       "a:gc", "a:1x", "a:x1"])
def test_colons_that_name_no_bucket_group_or_client_are_still_accepted(namespace: str) -> None:
    assert valid(namespace)
